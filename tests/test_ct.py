"""Tests of taichi_xray.ct: label maps -> meshes, CT volume projector.

References are independent: a plain numpy ray march (scipy map_coordinates,
fine fixed step from the source), analytic chord lengths of boxes and spheres,
voxel counts x voxel volume.
"""
import json
import os

import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from taichi_xray.camera import Camera
from taichi_xray.ct import CTVolume, hu_to_materials, labels_to_meshes, nifti_affine_to_lps

from conftest import SHARED as DATA  # ../shared/data/pelvis-ct beside the checkout


# ------------------------------------------------------------------ helpers
def rot(ax, ay, az):
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    Rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


def make_affine(spacing, R=np.eye(3), t=(0, 0, 0)):
    A = np.eye(4)
    A[:3, :3] = R @ np.diag(spacing)
    A[:3, 3] = t
    return A


def box_center(shape, A_lps):
    return A_lps[:3, :3] @ ((np.array(shape) - 1) / 2.0) + A_lps[:3, 3]


def numpy_march(fractions, A_lps, cam, ds=0.01):
    """Brute-force reference: fixed tiny step from the source, trilinear with
    edge clamping inside the box [-0.5, n - 0.5]^3, zero outside."""
    n = np.array(fractions.shape[:3], dtype=np.float64)
    Ainv = np.linalg.inv(A_lps)
    src = cam.source
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]) * n - 0.5
    cw = corners @ A_lps[:3, :3].T + A_lps[:3, 3]
    tmax = np.linalg.norm(cw - src, axis=1).max() + 1.0
    t = np.arange(ds / 2, tmax, ds)
    rays = cam.pixel_rays(normalize=True).reshape(-1, 3)
    out = np.zeros((2, len(rays)))
    for r, d in enumerate(rays):
        p = src + t[:, None] * d
        q = p @ Ainv[:3, :3].T + Ainv[:3, 3]
        inside = np.all((q >= -0.5) & (q <= n - 0.5), axis=1)
        if not inside.any():
            continue
        qi = q[inside].T
        for m in range(2):
            v = map_coordinates(fractions[..., m].astype(np.float64), qi, order=1, mode="nearest")
            out[m, r] = v.sum() * ds
    return out.reshape(2, cam.height, cam.width)


def ray_sphere_chord(cam, c, R):
    src = cam.source
    d = cam.pixel_rays(normalize=True)
    oc = c - src
    tc = d @ oc
    b2 = np.maximum((oc @ oc) - tc**2, 0)
    chord = 2 * np.sqrt(np.maximum(R * R - b2, 0))
    return chord, np.sqrt(b2)


def ray_box_chord_world(cam, A_lps, shape):
    """Chord through the oriented box by clipping against its 6 world planes."""
    src = cam.source
    d = cam.pixel_rays(normalize=True).reshape(-1, 3)
    M = A_lps[:3, :3]
    n = np.array(shape, dtype=np.float64)
    t0 = np.zeros(len(d))
    t1 = np.full(len(d), np.inf)
    for a in range(3):
        axis = M[:, a]
        normal = np.cross(M[:, (a + 1) % 3], M[:, (a + 2) % 3])
        normal /= np.linalg.norm(normal)
        # planes through the points at index -0.5 and n - 0.5 along axis a
        p_lo = A_lps[:3, 3] - 0.5 * axis
        p_hi = A_lps[:3, 3] + (n[a] - 0.5) * axis
        s_lo = (p_lo - src) @ normal
        s_hi = (p_hi - src) @ normal
        dn = d @ normal
        with np.errstate(divide="ignore", invalid="ignore"):
            ta, tb = s_lo / dn, s_hi / dn
        t0 = np.maximum(t0, np.minimum(ta, tb))
        t1 = np.minimum(t1, np.maximum(ta, tb))
    return np.maximum(t1 - t0, 0).reshape(cam.height, cam.width)


def cam_at(center, **kw):
    args = dict(sid=150.0, sdd=300.0, width=20, height=16, pixel_spacing=2.5, isocenter=center)
    args.update(kw)
    return Camera.c_arm(**args)


# --------------------------------------------------------- HU -> materials
def test_hu_to_materials_breakpoints():
    hb = 1600.0
    hu = np.array([-1500, -1000, -500, 0, 400, 800, 1600, 3200])
    f = hu_to_materials(hu, hb)
    assert f.dtype == np.float32 and f.shape == (8, 2)
    np.testing.assert_allclose(f[:, 0], [0, 0, 0.5, 1, 0.75, 0.5, 0, 0], atol=1e-7)
    np.testing.assert_allclose(f[:, 1], [0, 0, 0, 0, 0.25, 0.5, 1, 4200 / 2600], atol=1e-7)
    # at the reference energy (where bone has CT number hb) the decomposition
    # reproduces the HU definition mu = mu_w (1 + HU / 1000) for every HU >= -1000
    mu_w = 0.02
    mu_b = mu_w * (1 + hb / 1000)
    h = np.linspace(-1000, 2.5 * hb, 211)
    g = hu_to_materials(h, hb).astype(np.float64)
    np.testing.assert_allclose(g[:, 0] * mu_w + g[:, 1] * mu_b, mu_w * (1 + h / 1000), rtol=1e-6, atol=1e-9)
    assert np.all(g >= 0) and np.all(g[:, 0] <= 1)
    with pytest.raises(ValueError, match="hu_bone"):
        hu_to_materials(hu, -5)


# ------------------------------------------------------------- projector
def test_projector_matches_numpy_reference_random_volume():
    rng = np.random.default_rng(0)
    shape = (9, 8, 7)
    hu = rng.uniform(-1000, 2400, size=shape)
    A = make_affine((2.0, 2.5, 3.0), rot(0.3, -0.2, 0.5), (10.0, -20.0, 5.0))  # RAS
    vol = CTVolume(hu, A, space="RAS")
    A_lps = nifti_affine_to_lps(A)
    np.testing.assert_allclose(vol.affine, A_lps)
    cam = cam_at(box_center(shape, A_lps), lao=25, cran=-15)
    ref = numpy_march(vol.fractions, A_lps, cam)
    assert (ref[0] == 0).any() and (ref[0] > 0).sum() > 100  # some rays miss, most hit
    fine = vol.project(cam, step_mm=0.01)
    assert fine.shape == (2, 16, 20) and fine.dtype == np.float32
    scale = ref.max()
    np.testing.assert_allclose(fine, ref, atol=2e-3 * scale)
    coarse = vol.project(cam)  # default: half the smallest voxel (1 mm)
    err = np.abs(coarse - ref).max() / scale
    assert err < 0.01, err  # midpoint rule, half-voxel steps: measured 0.4 % of the largest integral


def test_projector_uniform_box_exact_chords():
    shape = (12, 10, 8)
    A = make_affine((1.5, 2.0, 2.5), rot(0.4, 0.3, -0.6), (-5.0, 7.0, 3.0))
    vol = CTVolume(np.zeros(shape), A, space="LPS")  # HU 0 = water everywhere
    cam = cam_at(box_center(shape, A), lao=-35, cran=20, width=24, height=20)
    L = vol.project(cam)
    chord = ray_box_chord_world(cam, A, shape)
    assert (chord == 0).any() and (chord > 0).any()
    np.testing.assert_allclose(L[0], chord, rtol=1e-4, atol=1e-3)
    assert np.all(L[1] == 0)


def test_projector_source_inside_volume():
    shape = (10, 10, 10)
    vol = CTVolume(np.zeros(shape), make_affine((4.0, 4.0, 4.0)), space="LPS")
    c = box_center(shape, vol.affine)
    cam = Camera.c_arm(sid=5.0, sdd=100.0, width=3, height=3, pixel_spacing=1.0, isocenter=c)
    L = vol.project(cam)
    # the central ray starts at the source, 5 mm posterior of the centre, and leaves
    # through the anterior face 20 mm in front of the centre
    assert L[0, 1, 1] == pytest.approx(20.0 + 5.0, rel=1e-4)


def test_projector_sphere_vs_analytic_chords():
    # 1 mm voxels; water box with an anti-aliased bone sphere (partial-volume
    # fractions from 4^3 supersampling): HU = frac * hu_bone -> f_b = frac
    n, R = 32, 9.0
    c_idx = np.array([15.3, 15.8, 16.1])
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    g = np.arange(n)
    frac = np.zeros((n, n, n))
    for a in sub:
        for b in sub:
            for e in sub:
                X, Y, Z = np.meshgrid(g + a, g + b, g + e, indexing="ij")
                frac += ((X - c_idx[0]) ** 2 + (Y - c_idx[1]) ** 2 + (Z - c_idx[2]) ** 2 <= R * R)
    frac /= 64
    vol = CTVolume(frac * 1600.0, make_affine((1, 1, 1), t=(100, -50, 20)), space="LPS", hu_bone=1600.0)
    c = c_idx + vol.affine[:3, 3]
    cam = cam_at(c, width=24, height=24, pixel_spacing=1.5)
    L = vol.project(cam)
    chord, b = ray_sphere_chord(cam, c, R)
    box = ray_box_chord_world(cam, vol.affine, (n, n, n))
    # partial-volume + trilinear blur of the 1 mm grid (not the step: a 0.01 mm
    # step gives the same errors, and so does the numpy reference march)
    err = np.abs(L[1] - chord)
    assert err[b < 0.5 * R].max() < 0.12, err[b < 0.5 * R].max()  # measured 0.10 mm
    assert err[b < 0.8 * R].max() < 0.3, err[b < 0.8 * R].max()  # measured 0.23 mm
    assert L[1].sum() == pytest.approx(chord.sum(), rel=0.02)  # grazing rays included
    np.testing.assert_allclose(L[0] + L[1], box, rtol=1e-4, atol=1e-3)


def test_projector_orientation_ras_blob():
    """A dense voxel at a known RAS position lands on the pixel camera.project predicts."""
    shape = (21, 19, 17)
    A = make_affine((2.0, 2.0, 2.0), t=(-20.0, 30.0, -10.0))  # RAS
    hu = np.full(shape, -1000.0)
    ijk = np.array([14, 5, 12])
    hu[tuple(ijk)] = 3000.0
    vol = CTVolume(hu, A, space="RAS")
    p_ras = A[:3, :3] @ ijk + A[:3, 3]
    p_lps = p_ras * [-1, -1, 1]
    np.testing.assert_allclose(vol.affine[:3, :3] @ ijk + vol.affine[:3, 3], p_lps)
    center = vol.center
    for lao, cran in [(0, 0), (40, 0), (0, 30)]:
        cam = cam_at(center, lao=lao, cran=cran, width=41, height=41, pixel_spacing=2.5)
        L = vol.project(cam)
        r, col = np.unravel_index(np.argmax(L[1]), L[1].shape)
        uv, _ = cam.project(p_lps[None])
        assert abs(col - uv[0, 0]) <= 1 and abs(r - uv[0, 1]) <= 1, (lao, cran, (col, r), uv)


def test_projector_out_argument_and_errors():
    vol = CTVolume(np.zeros((4, 5, 6)))
    cam = cam_at(vol.center, width=8, height=6)
    out = np.full((2, 6, 8), np.nan, dtype=np.float32)
    res = vol.project(cam, out=out)
    assert res is out and np.isfinite(out).all()
    torch = pytest.importorskip("torch")
    from taichi_xray.runtime import torch_device

    t = torch.zeros((2, 6, 8), dtype=torch.float32, device=torch_device())
    vol.project(cam, out=t)
    np.testing.assert_allclose(t.cpu().numpy(), out)
    with pytest.raises(ValueError, match="out must have shape"):
        vol.project(cam, out=np.zeros((2, 5, 8), np.float32))
    with pytest.raises(TypeError, match="float32"):
        vol.project(cam, out=np.zeros((2, 6, 8)))
    with pytest.raises(ValueError, match="step_mm"):
        vol.project(cam, step_mm=0)
    with pytest.raises(ValueError, match="3-D"):
        CTVolume(np.zeros((4, 5)))
    with pytest.raises(ValueError, match="NaN"):
        CTVolume(np.full((2, 2, 2), np.nan))
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        CTVolume(np.zeros((2, 2, 2)), np.eye(3))
    with pytest.raises(ValueError, match="space"):
        CTVolume(np.zeros((2, 2, 2)), np.eye(4), space="XYZ")
    with pytest.raises(FileNotFoundError):
        CTVolume.from_nifti("/nonexistent/ct.nii.gz")


def test_ctvolume_from_nifti(tmp_path):
    nib = pytest.importorskip("nibabel")
    A = make_affine((2.0, 3.0, 4.0), t=(10.0, 20.0, 30.0))
    hu = np.random.default_rng(1).integers(-1000, 2000, size=(5, 6, 7)).astype(np.int16)
    p = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(hu, A), str(p))
    vol = CTVolume.from_nifti(p)
    np.testing.assert_allclose(vol.affine, np.diag([-1, -1, 1, 1]) @ A)
    np.testing.assert_allclose(vol.spacing, [2, 3, 4])
    np.testing.assert_allclose(vol.fractions, hu_to_materials(hu))


# ----------------------------------------------------------- labels -> mesh
def sphere_mask(shape, c, R):
    X, Y, Z = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return (X - c[0]) ** 2 + (Y - c[1]) ** 2 + (Z - c[2]) ** 2 <= R * R


def test_labels_sphere_watertight_outward_volume():
    lab = np.zeros((26, 24, 28), dtype=np.int16)
    m = sphere_mask(lab.shape, (12.2, 11.7, 13.4), 9.0)
    lab[m] = 7
    A = make_affine((1.5, 1.0, 2.0), t=(5.0, -3.0, 40.0))  # RAS, anisotropic voxels
    meshes = labels_to_meshes(lab, {"ball": 7}, affine=A)
    mesh = meshes["ball"]
    rep = mesh.check()
    assert rep.watertight and rep.outward and rep.components == 1 and rep.degenerate_faces == 0
    vox = m.sum() * 1.5 * 1.0 * 2.0
    assert abs(mesh.volume() / vox - 1) < 0.02, mesh.volume() / vox
    # centroid: voxel centroid through the affine, then RAS -> LPS
    c_ras = A[:3, :3] @ np.argwhere(m).mean(0) + A[:3, 3]
    v = mesh.vertices[mesh.faces]
    w = np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2]))
    centroid = (w[:, None] * v.sum(1)).sum(0) / (4 * w.sum())
    np.testing.assert_allclose(centroid, c_ras * [-1, -1, 1], atol=0.1)
    # no smoothing: still closed, and the staircase volume is close too
    raw = labels_to_meshes(lab, {"ball": 7}, affine=A, smooth_iterations=0)["ball"]
    assert raw.check().outward and abs(raw.volume() / vox - 1) < 0.03


def test_labels_box_touching_border_and_flipped_affine():
    lab = np.zeros((10, 12, 9), dtype=np.uint8)
    lab[:6, 3:9, 2:] = 1  # touches the x = 0 and z = max borders
    A = make_affine((2.0, 2.0, 2.0))
    A[0, 0] = -2.0  # negative determinant: a reflection
    mesh = labels_to_meshes(lab, [1], affine=A, space="LPS")["label_1"]
    rep = mesh.check()
    assert rep.watertight and rep.outward
    vox = lab.sum() * 8.0
    assert abs(mesh.volume() / vox - 1) < 0.05, mesh.volume() / vox  # corners and edges chamfered
    lo, hi = mesh.bounds
    # x flipped: indices 0..5 -> x 0..-10, and the surface lies half a voxel beyond the centres
    assert lo[0] == pytest.approx(-11.0, abs=0.5) and hi[0] == pytest.approx(1.0, abs=0.5)
    with pytest.raises(ValueError, match="touches the volume border"):
        labels_to_meshes(lab, [1], pad=False)


def test_labels_merge_components_and_names(tmp_path):
    lab = np.zeros((30, 20, 20), dtype=np.int32)
    lab[2:10, 3:11, 4:12] = 3  # 512 voxels
    lab[15:27, 5:15, 5:15] = 5  # 1200 voxels
    lab[28, 18, 18] = 9
    names = {3: "small", 5: "big", 9: "speck"}
    out = labels_to_meshes(lab, {"both": ["small", 5]}, label_names=names)
    both = out["both"]
    rep = both.check()
    assert rep.watertight and rep.outward and rep.components == 2
    assert both.volume() == pytest.approx(512 + 1200, rel=0.05)
    largest = labels_to_meshes(lab, {"both": [3, 5]}, components="largest")["both"]
    assert largest.check().components == 1 and largest.volume() == pytest.approx(1200, rel=0.05)
    allm = labels_to_meshes(lab, None, label_names=names)
    assert set(allm) == {"small", "big", "speck"} and allm["speck"].check().watertight
    with pytest.raises(KeyError, match="small 3"):
        labels_to_meshes(lab, ["nonexistent"], label_names=names)
    with pytest.raises(KeyError, match=r"id 42.*present labels: small 3, big 5, speck 9"):
        labels_to_meshes(lab, {"x": 42}, label_names=names)
    with pytest.raises(ValueError, match="3-D"):
        labels_to_meshes(np.zeros((4, 4)), [1])
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        labels_to_meshes(lab, [3], affine=np.eye(3))
    with pytest.raises(ValueError, match="non-integer"):
        labels_to_meshes(lab + 0.3, [3])
    with pytest.raises(ValueError, match="components"):
        labels_to_meshes(lab, [3], components="some")
    with pytest.raises(FileNotFoundError):
        labels_to_meshes(tmp_path / "missing.nii.gz", [3])


def test_labels_from_nifti_file_with_json(tmp_path):
    nib = pytest.importorskip("nibabel")
    lab = np.zeros((16, 14, 12), dtype=np.float32)  # float map, as TotalSegmentator writes
    lab[3:9, 4:10, 2:8] = 90.0
    A = make_affine((3.0, 3.0, 3.0), t=(-100.0, 10.0, 50.0))
    nib.save(nib.Nifti1Image(lab, A), str(tmp_path / "labels.nii.gz"))
    (tmp_path / "labels.json").write_text(json.dumps({"90": "hip_left", "91": "hip_right"}))
    mesh = labels_to_meshes(tmp_path / "labels.nii.gz", ["hip_left"])["hip_left"]
    lo, hi = mesh.bounds
    # RAS x in [-100 + 3*3 - 1.5, -100 + 8*3 + 1.5] -> LPS x = -RAS x
    assert lo[0] == pytest.approx(100 - 24 - 1.5, abs=0.8) and hi[0] == pytest.approx(100 - 9 + 1.5, abs=0.8)
    assert lo[2] == pytest.approx(50 + 6 - 1.5, abs=0.8) and hi[2] == pytest.approx(50 + 21 + 1.5, abs=0.8)
    with pytest.raises(KeyError, match="hip_right.*does not occur"):
        labels_to_meshes(tmp_path / "labels.nii.gz", ["hip_right"])


def test_labels_target_faces_coarsening():
    lab = np.zeros((40, 40, 40), dtype=np.int8)
    m = sphere_mask(lab.shape, (19.5, 19.5, 19.5), 15.0)
    lab[m] = 1
    full = labels_to_meshes(lab, [1])["label_1"]
    small = labels_to_meshes(lab, [1], target_faces=1000)["label_1"]
    assert full.n_faces > 4000 and small.n_faces <= 1000
    assert small.check().outward
    assert small.volume() == pytest.approx(m.sum(), rel=0.05)


# ------------------------------------------------------------ real CT data
@pytest.mark.skipif(not os.path.exists(os.path.join(DATA, "ct.nii.gz")), reason=f"real CT data not present at {DATA}")
def test_real_pelvis_ct():
    nib = pytest.importorskip("nibabel")
    lab = np.rint(np.asarray(nib.load(os.path.join(DATA, "labels.nii.gz")).dataobj)).astype(int)
    meshes = labels_to_meshes(os.path.join(DATA, "labels.nii.gz"), ["hip_left", "hip_right", "sacrum"])
    ids = {"hip_left": 90, "hip_right": 91, "sacrum": 92}
    for name, mesh in meshes.items():
        rep = mesh.check()
        assert rep.watertight and rep.outward, (name, rep.problems())
        vox = (lab == ids[name]).sum() * 27.0
        assert abs(mesh.volume() / vox - 1) < 0.03, (name, mesh.volume(), vox)
    # LPS: the left hip lies at +x, the right at -x
    assert meshes["hip_left"].vertices[:, 0].mean() > 0 > meshes["hip_right"].vertices[:, 0].mean()

    vol = CTVolume.from_nifti(os.path.join(DATA, "ct.nii.gz"))
    cam = Camera.c_arm(sid=750, sdd=1200, width=128, height=128, pixel_spacing=4.0, isocenter=vol.center)
    L = vol.project(cam)
    assert L.shape == (2, 128, 128) and np.isfinite(L).all() and (L >= 0).all()
    # bone channel: larger where the projected hip-bone vertices fall than elsewhere
    uv, _ = cam.project(np.concatenate([meshes["hip_left"].vertices, meshes["hip_right"].vertices]))
    px = np.rint(uv).astype(int)
    ok = (px[:, 0] >= 0) & (px[:, 0] < 128) & (px[:, 1] >= 0) & (px[:, 1] < 128)
    bone_px = np.zeros((128, 128), bool)
    bone_px[px[ok, 1], px[ok, 0]] = True
    assert ok.mean() > 0.9
    assert np.median(L[1][bone_px]) > 2 * np.median(L[1][~bone_px])
    # radiological view: the patient's left hip (+x) appears on the image's right
    assert uv[: len(meshes["hip_left"].vertices), 0].mean() > 64


def test_fractions_cannot_go_stale_on_the_device():
    """project() keeps a device copy of the fractions: editing them in place raises instead of
    silently projecting the old values; a new array is projected."""
    vol = CTVolume(np.zeros((6, 5, 4)), make_affine((4.0, 4.0, 4.0)), space="LPS")
    cam = Camera.c_arm(sid=300.0, sdd=500.0, width=8, height=8, pixel_spacing=4.0)
    a = vol.project(cam).copy()
    assert a[0].max() > 5  # water (HU 0) along the rays
    with pytest.raises(ValueError, match="read-only"):
        vol.fractions[..., 0] = 2.0
    vol.fractions = np.ascontiguousarray(2 * vol.fractions)
    np.testing.assert_allclose(vol.project(cam), 2 * a, rtol=1e-6, atol=1e-6)
