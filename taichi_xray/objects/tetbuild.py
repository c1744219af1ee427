"""Building tetrahedral meshes: tetrahedralising a closed surface, densities from a CT.

Tetrahedralisation (:func:`tetrahedralize`) has two back ends:

* ``method="ftetwild"`` (default): fTetWild (Hu et al., *Fast Tetrahedral Meshing in
  the Wild*, ACM TOG 39(4), 2020) through the ``pytetwild`` package
  (``pip install pytetwild==0.4.2``). Licence: MPL-2.0 (file-level copyleft), which may be
  used by this Apache-2.0 project as an optional dependency without changing its licence.
  Robust to imperfect input (self-intersections, small holes, duplicated faces): the
  output's boundary lies within an *envelope* of ``epsilon`` × the bounding-box diagonal
  of the input surface, not on it, so the volume differs by up to about
  ``epsilon · diagonal · area`` (measured: 4e-4 relative on a radius-20 mm icosphere at the
  default ``epsilon=1e-3``, 3e-7 at ``1e-4``, where the input vertices are kept exactly but
  meshing takes ~20 s instead of ~1 s). ``optimize=False`` skips fTetWild's vertex
  optimisation, which is what moves the surface: the input surface is then kept (volume to
  rounding) at the price of more, worse-shaped tets. fTetWild is not deterministic between runs.
  ``pytetwild`` 0.4.2 imports PyVista (and VTK) on ``import pytetwild`` although only its
  PyVista helpers need it; without PyVista installed this module loads its compiled
  extension directly (``pytetwild.PyfTetWildWrapper``, whose argument order is that of
  0.4.2).
* ``method="tetgen"``: TetGen (Si, ACM TOMS 41(2), 2015) through the ``tetgen`` package: a
  constrained Delaunay tetrahedralisation that keeps the input surface exactly (same
  vertices and triangles; the volume matches to rounding) and is ~100x faster, but needs a
  clean closed, non-self-intersecting input and is licensed **AGPL-3.0** (the ``tetgen``
  wrapper is MIT, the TetGen library it bundles is AGPL-3.0 or commercial). It is therefore
  *not* a dependency of this project: a user who installs ``tetgen`` themselves accepts its
  licence for their combined work.

fTetWild is the default because its licence is compatible with distributing this project
under Apache-2.0 and because meshes extracted from CT labels are not always clean.

Densities (:func:`sample_ct`): Hounsfield values are mapped voxel by voxel to basis-material
weights by a :class:`taichi_xray.physics.hu.HUConversion` (the conversion the volume
projector uses, :meth:`taichi_xray.objects.volume.Volume.densities`), then interpolated
trilinearly between voxel centres at the sample points (world LPS mm), held at the edge
value in the outer half-voxel rim and zero outside the volume's box, as the projector's
trilinear method does. Constant meshes sample at tet centroids, linear ones at vertices.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import math
import os
import tempfile
import threading
import time
import warnings

import numpy as np

from ..mesh import Mesh
from .tetmesh import DEFAULT_BASIS, TetMesh, TetMeshWarning

__all__ = ["tetrahedralize", "sample_ct", "load_ct", "tetmesh_from_ct"]


# ------------------------------------------------------------------------------------------
# tetrahedralisation
# ------------------------------------------------------------------------------------------
def _ftetwild_module():
    """pytetwild's compiled extension (pytetwild imports PyVista on import; avoid needing it)."""
    try:
        from pytetwild import PyfTetWildWrapper  # works when PyVista is installed

        return PyfTetWildWrapper
    except ImportError:
        pass
    spec = importlib.util.find_spec("pytetwild")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("method='ftetwild' needs the pytetwild package: pip install pytetwild==0.4.2")
    folder = spec.submodule_search_locations[0]
    names = [f for f in os.listdir(folder) if f.startswith("PyfTetWildWrapper") and
             f.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))]
    if not names:
        raise ImportError(f"pytetwild at {folder} has no compiled PyfTetWildWrapper extension")
    path = os.path.join(folder, names[0])
    loader = importlib.machinery.ExtensionFileLoader("pytetwild.PyfTetWildWrapper", path)
    mod = importlib.util.module_from_spec(importlib.util.spec_from_file_location(
        "pytetwild.PyfTetWildWrapper", path, loader=loader))
    loader.exec_module(mod)
    return mod


_FTETWILD_LOCK = threading.Lock()


def _run_ftetwild(V, F, max_volume, quality, epsilon, threads, optimize):
    W = _ftetwild_module()
    edge_abs = 0.0 if max_volume is None else (6.0 * math.sqrt(2.0) * max_volume) ** (1.0 / 3.0)
    stop_energy = 10.0 if quality is None else float(quality)
    if stop_energy <= 3.0:
        raise ValueError(f"quality (fTetWild's AMIPS stop energy) must be > 3 (3 = regular tets), got {quality}")
    e = np.empty
    # fTetWild writes __tracked_surface.stl into the working directory: run it in a temporary one
    # (under a lock: the working directory is the process's), never in the user's folder
    with _FTETWILD_LOCK, tempfile.TemporaryDirectory(prefix="taichi_xray_ftetwild_") as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            v, t = W.tetrahedralize_mesh(
                np.array(V, np.float64), np.array(F, np.uint32),  # writable copies (nanobind)
                bool(optimize), False, 0.05, float(edge_abs), float(epsilon), stop_energy, False, int(threads), 80,
                6, True, True, False, e((0, 3)), e((0, 4), np.int32), e(0))
        except TypeError as exc:  # another pytetwild version with another argument list
            raise ImportError(f"unsupported pytetwild version (this code calls 0.4.2's extension): {exc}") from None
        finally:
            os.chdir(cwd)
    return np.asarray(v, np.float64), np.asarray(t, np.int64)


def _run_tetgen(V, F, max_volume, quality):
    try:
        import tetgen
    except ImportError:
        raise ImportError("method='tetgen' needs the tetgen package (AGPL-3.0, see this module's docstring): "
                          "pip install tetgen==0.8.4") from None
    ratio = 2.0 if quality is None else float(quality)
    if ratio < 1.0:
        raise ValueError(f"quality (TetGen's radius-edge ratio bound) must be >= 1, got {quality}")
    out = tetgen.TetGen(np.array(V, np.float64), np.array(F, np.int32)).tetrahedralize(
        plc=True, quality=True, minratio=ratio, fixedvolume=max_volume is not None,
        maxvolume=-1.0 if max_volume is None else float(max_volume), quiet=True)
    return np.asarray(out[0], np.float64), np.asarray(out[1], np.int64)[:, :4]


def tetrahedralize(mesh, max_volume: float | None = None, quality: float | None = None, method: str = "ftetwild",
                   *, epsilon: float = 1e-3, threads: int = 0, optimize: bool = True, densities=None,
                   basis=DEFAULT_BASIS, kind: str = "auto", name: str | None = None) -> TetMesh:
    """Tetrahedralise the volume enclosed by a closed triangle mesh.

    Parameters
    ----------
    mesh : :class:`~taichi_xray.mesh.Mesh` or (vertices (N, 3) mm, faces (M, 3)).
    max_volume : target tet volume in mm^3. TetGen: an upper bound (switch ``a``).
        fTetWild: sets the ideal edge length to that of a regular tet of this volume,
        ``(6 sqrt(2) max_volume)^(1/3)`` (a target, not a bound); default 1/20 of the
        bounding-box diagonal.
    quality : fTetWild: the AMIPS energy at which optimisation stops (default 10; lower is
        better, 3 = regular). TetGen: the radius-edge ratio bound (switch ``q``, default 2.0).
    method : "ftetwild" (default, MPL-2.0) or "tetgen" (AGPL-3.0); see the module docstring.
    epsilon : fTetWild's envelope, relative to the bounding-box diagonal.
    threads : fTetWild's threads (0 = all cores).
    optimize : fTetWild's quality optimisation (False: faster, worse tets).
    densities, basis, kind : passed to :class:`TetMesh` (a function of points is evaluated
        with :meth:`TetMesh.with_densities`).

    Returns a :class:`TetMesh` with ``build_info`` (dict: method, parameters, input and
    output volumes, their relative difference, seconds).
    """
    if isinstance(mesh, Mesh):
        surf = mesh
    else:
        try:
            V, F = mesh
        except (TypeError, ValueError):
            raise TypeError("mesh must be a Mesh or a (vertices, faces) pair") from None
        surf = Mesh(V, F)
    if max_volume is not None and not (float(max_volume) > 0 and math.isfinite(float(max_volume))):
        raise ValueError(f"max_volume must be a positive number of mm^3, got {max_volume!r}")
    if not (0 < float(epsilon) < 1):
        raise ValueError(f"epsilon must lie in (0, 1), got {epsilon!r}")
    rep = surf.check()
    label = f"surface {surf.name!r}" if surf.name else "surface"
    m = method.strip().lower()
    t0 = time.perf_counter()
    if m == "tetgen":
        if not rep.consistent:
            raise ValueError(f"{label}: TetGen needs a closed, consistently oriented surface "
                             f"({'; '.join(rep.problems())}); use method='ftetwild' for imperfect input")
        V, X = _run_tetgen(surf.vertices, surf.faces, max_volume, quality)
    elif m == "ftetwild":
        if not rep.watertight:
            warnings.warn(f"{label} is not watertight ({'; '.join(rep.problems())}); fTetWild fills it by winding "
                          "number", TetMeshWarning, stacklevel=2)
        V, X = _run_ftetwild(surf.vertices, surf.faces, max_volume, quality, epsilon, threads, optimize)
    else:
        raise ValueError(f"method must be 'ftetwild' or 'tetgen', got {method!r}")
    seconds = time.perf_counter() - t0
    if len(X) == 0:
        raise ValueError(f"{label}: tetrahedralisation produced no tets (is the surface closed and non-empty?)")
    used = np.unique(X)
    if len(used) < len(V):  # drop vertices the mesher left unused (silently: not the user's input)
        remap = np.full(len(V), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        V, X = V[used], remap[X]
    func = densities if callable(densities) else None
    tm = TetMesh(V, X, None if func else densities, basis, name if name is not None else surf.name, kind=kind)
    if func is not None:
        tm = tm.with_densities(func, kind=kind)
    v_in = abs(rep.volume)
    tm.build_info = dict(method=m, max_volume=max_volume, quality=quality,
                         epsilon=epsilon if m == "ftetwild" else None, input_volume=v_in, volume=tm.volume(),
                         relative_volume_difference=(tm.volume() - v_in) / v_in if v_in > 0 else float("nan"),
                         seconds=seconds)
    return tm


# ------------------------------------------------------------------------------------------
# densities from a CT
# ------------------------------------------------------------------------------------------
def load_ct(ct):
    """A :class:`taichi_xray.objects.volume.Volume` from a Volume, a file path (NIfTI, DICOM
    folder, .npy/.npz, see :meth:`Volume.load`) or a tuple ``(hu (X, Y, Z), affine (4, 4)[,
    space "LPS" | "RAS"])``."""
    from .volume import Volume

    if isinstance(ct, Volume):
        return ct
    if isinstance(ct, (str, os.PathLike)):
        return Volume.load(ct)
    if isinstance(ct, tuple) and len(ct) in (2, 3):
        return Volume(ct[0], ct[1], space=ct[2] if len(ct) == 3 else "LPS")
    raise TypeError("ct must be a Volume, a path, or a tuple (hu, affine[, space])")


def sample_ct(ct, points, conversion="water_bone", basis=None, outside: str = "zero", **conversion_options):
    """Basis-material weights (n, B) float64 of a CT at world points.

    ct : see :func:`load_ct` (a NIfTI file's RAS affine is converted to LPS).
    points : (n, 3) world LPS mm.
    conversion : name, dict or :class:`~taichi_xray.physics.hu.HUConversion`; default
        ``"water_bone"`` (water and ICRU-44 cortical bone, the default tet-mesh basis).
        ``conversion_options`` go to it (e.g. ``hu_bone=1600``).
    basis : if given, must equal the conversion's material names (a check).
    outside : "zero" (points outside the volume's box get 0, with a warning giving their
        number) or "error".
    """
    from ..physics.hu import get_hu_conversion

    vol = load_ct(ct)
    conv = get_hu_conversion(conversion, **conversion_options)
    if basis is not None and tuple(basis) != tuple(conv.names):
        raise ValueError(f"basis {tuple(basis)} does not match the HU conversion's materials {tuple(conv.names)}; "
                         "pass conversion=... with those materials")
    P = np.asarray(points, dtype=np.float64)
    if P.ndim != 2 or P.shape[1] != 3 or not np.isfinite(P).all():
        raise ValueError(f"points must be a finite (n, 3) array in mm, got shape {P.shape}")
    if outside not in ("zero", "error"):
        raise ValueError(f"outside must be 'zero' or 'error', got {outside!r}")
    from scipy.ndimage import map_coordinates

    idx = vol.world_to_index(P)  # (n, 3) fractional voxel indices
    n = np.array(vol.shape, dtype=np.float64)
    out_box = ((idx < -0.5) | (idx > n - 0.5)).any(axis=1)
    if out_box.any():
        if outside == "error":
            raise ValueError(f"{int(out_box.sum())} of {len(P)} points lie outside the CT volume's box")
        warnings.warn(f"{int(out_box.sum())} of {len(P)} sample points lie outside the CT volume; they get density 0",
                      TetMeshWarning, stacklevel=2)
    lo = np.maximum(np.floor(idx[~out_box].min(axis=0)).astype(int) - 1, 0) if (~out_box).any() else np.zeros(3, int)
    hi = np.minimum(np.ceil(idx[~out_box].max(axis=0)).astype(int) + 2, n.astype(int)) if (~out_box).any() \
        else np.ones(3, int)
    sub = np.asarray(vol.values[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], dtype=np.float64)
    W = conv(sub)  # (x, y, z, B): convert voxels, then interpolate (as the projector)
    q = np.clip(idx - lo, 0.0, np.array(sub.shape, dtype=np.float64) - 1.0)  # edge value in the outer rim
    D = np.stack([map_coordinates(W[..., b], q.T, order=1, mode="nearest") for b in range(W.shape[-1])], axis=1)
    D[out_box] = 0.0
    return D


def tetmesh_from_ct(mesh, ct, kind: str = "linear", conversion="water_bone", *, max_volume=None, quality=None,
                    method="ftetwild", **options) -> TetMesh:
    """Tetrahedralise ``mesh`` and fill it with densities sampled from ``ct`` (see
    :func:`tetrahedralize`, :func:`sample_ct`)."""
    from ..physics.hu import get_hu_conversion

    conv = get_hu_conversion(conversion)
    tm = tetrahedralize(mesh, max_volume=max_volume, quality=quality, method=method, basis=conv.names, **options)
    info = getattr(tm, "build_info", None)
    out = tm.sample_ct(ct, kind=kind, conversion=conv)
    out.build_info = info
    return out
