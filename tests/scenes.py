"""Small scene files shared by several test files (the viewer's, the datasets', the resident worker's,
the scene sections'): written into a folder with their meshes, so that each test reads them as a user
would."""
from pathlib import Path

import numpy as np

VIEWER_TOML = """
[scene]
name = "small"
[camera]
sid = 600.0
sdd = 1000.0
detector = [{w}, {h}]
pixel_spacing = {px}
lao = 10.0
cran = -5.0
[spectrum]
kvp = {kvp}
filtration = {{ Al = 2.5 }}
bin_width = 5.0
[output]
kind = "line_integral"
air = true
{extra}
[[object]]
name = "body"
mesh = "body.stl"
material = "soft_tissue"
[[object]]
name = "bone"
mesh = "bone.stl"
material = "cortical_bone"
parent = "body"
[[object]]
name = "lung"
mesh = "lung.stl"
material = "lung"
parent = "body"
"""


def write_viewer_scene(folder, name: str = "small.toml", w: int = 48, h: int = 40, px: float = 6.0,
                       kvp: float = 70, extra: str = "") -> Path:
    """The viewer tests' scene: an ellipsoid "body" with a box "bone" and a sphere "lung" beside it
    inside; ``extra`` is inserted before the objects (e.g. a [source] section). Returns its path."""
    from taichi_xray.mesh import Mesh
    from taichi_xray.primitives import box, ellipsoid, icosphere

    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    meshes = {"body": lambda: ellipsoid((90.0, 60.0, 110.0), n_lat=12, n_lon=24),
              "bone": lambda: box((30.0, 30.0, 120.0), centre=(0.0, 20.0, 0.0)),
              "lung": lambda: icosphere(30.0, 2, centre=(-50.0, -10.0, 20.0))}
    for n, make in meshes.items():
        if not (d / f"{n}.stl").exists():
            Mesh(*make(), n).save(d / f"{n}.stl")
    (d / name).write_text(VIEWER_TOML.format(w=w, h=h, px=px, kvp=kvp, extra=extra))
    return d / name


def camera_toml(w: int = 48, h: int = 40, px: float = 4.0, sid: float = 500.0, sdd: float = 800.0) -> str:
    return f"\n[camera]\nsid = {sid}\nsdd = {sdd}\ndetector = [{w}, {h}]\npixel_spacing = {px}\n"


def dataset_scene_toml(w: int = 48, h: int = 40, px: float = 4.0, kvp: float = 80, bin_width: float = 4.0) -> str:
    """The datasets' tiny scene: a body with two lungs, a heart and a bone inside (meshes ``{name}.obj``)."""
    return camera_toml(w, h, px) + f"""[spectrum]
kvp = {kvp}
filtration = {{ Al = 2.5 }}
bin_width = {bin_width}
[detector]
kind = "energy"
scintillator = {{ material = "CsI", thickness_mm = 0.6 }}
[output]
air = true
""" + "".join(f"""
[[object]]
name = "{n}"
mesh = "{n}.obj"
material = "{m}"
{'' if n == 'body' else 'parent = "body"'}
""" for n, m in (("body", "soft_tissue"), ("lung_left", "lung"), ("lung_right", "lung"), ("heart", "blood"),
                 ("bone", "cortical_bone")))


TET_OBJECTS = """
[[object]]
name = "body"
mesh = "body.stl"
material = "soft_tissue"
[[object]]
name = "bone_tets"
tetmesh = "tets.vtu"
parent = "body"
"""


def write_tet_meshes(folder) -> None:
    """The meshes of TET_OBJECTS: a tetrahedral block "bone_tets" (jittered Kuhn grid, two basis
    densities per tetrahedron, ``tets.vtu``) inside an icosphere "body" of radius 60 mm (``body.stl``)."""
    import taichi_xray as tx
    from reference_tet import kuhn_grid
    from taichi_xray.objects import TetMesh
    from taichi_xray.primitives import icosphere

    d = Path(folder)
    rng = np.random.default_rng(1)
    lo, hi = np.array([-20.0, -15.0, -10.0]), np.array([20.0, 15.0, 10.0])
    V, X = kuhn_grid((2, 2, 2), (hi - lo) / 2, lo, jitter=0.1, rng=rng)
    TetMesh(V, X, rng.uniform(0.2, 1.5, (len(X), 2)), name="bone_tets").save(d / "tets.vtu")
    tx.Mesh(*icosphere(60.0, 3), "body").save(d / "body.stl")
