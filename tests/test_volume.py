"""CT volumes: loaders, HU conversion, the Siddon / trilinear projector, its gradients, meshes inside.

Independent references written here (no code shared with the kernels):

* ``siddon_ref``: Siddon's original algorithm in float64 numpy (all plane crossings of the
  ray in voxel-index space, merged and sorted, the voxel of each segment from its
  midpoint), pose applied to the affine with scipy's rotation vectors;
* trilinear: a fine midpoint sum of scipy's ``map_coordinates(order=1, mode="nearest")``;
* meshes in a volume: analytic box and sphere chords;
* gradients: ``torch.autograd.gradcheck`` (float64 central differences);
* loaders: one synthetic volume written as a DICOM series (pydicom), NIfTI (nibabel) and
  NPY, whose world coordinates must agree.

Measured (see docs/volumes.md): Siddon against the reference, max |err| / max value 2e-14
in float64 and 5e-6 in float32; trilinear (step 1/4 voxel) against a 40x finer sum of the
same trilinear field 2.5e-5, and against the Siddon reference on a smooth phantom 2.6 % at
worst (a different model of the voxels, not an error).
"""
import os

import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates
from scipy.spatial.transform import Rotation

from taichi_xray.camera import Camera
from taichi_xray.objects.volume import Volume, VolumeError, rotation_deg
from taichi_xray.objects.volume_project import MeshSlots, VolumeProjector
from taichi_xray.physics.hu import get_hu_conversion

from conftest import SHARED


# ------------------------------------------------------------------ references
def siddon_ref(weights, A, cam, excl=None):
    """Line integrals (B, H, W) of ``weights`` (D0, D1, D2, B) on the grid of affine A (index -> world),
    float64 Siddon with sorted plane crossings. ``excl(r, c)`` -> list of excluded (t0, t1) mm."""
    n = np.array(weights.shape[:3])
    Ai = np.linalg.inv(A)
    s = cam.source
    H, W = cam.height, cam.width
    out = np.zeros((weights.shape[3], H, W))
    for r in range(H):
        for c in range(W):
            d = cam.M_inv @ np.array([c, r, 1.0])
            dl = np.linalg.norm(d)
            o = Ai[:3, :3] @ s + Ai[:3, 3]
            g = Ai[:3, :3] @ d
            alphas = [0.0]
            lo, hi = 0.0, np.inf
            for a in range(3):
                planes = np.arange(n[a] + 1) - 0.5
                if g[a] == 0:
                    if not (-0.5 <= o[a] <= n[a] - 0.5):
                        hi = -1
                    continue
                al = (planes - o[a]) / g[a]
                lo = max(lo, al.min())
                hi = min(hi, al.max())
                alphas.extend(al.tolist())
            if hi <= lo:
                continue
            if excl is not None:
                for t0, t1 in excl(r, c):
                    alphas += [t0 / dl, t1 / dl]
            al = np.unique(np.clip(np.array(alphas), lo, hi))
            mids = 0.5 * (al[1:] + al[:-1])
            seg = np.diff(al) * dl
            idx = np.floor(o[None] + mids[:, None] * g[None] + 0.5).astype(int)
            idx = np.clip(idx, 0, n - 1)
            keep = seg > 0
            if excl is not None:
                t = mids * dl
                for t0, t1 in excl(r, c):
                    keep &= ~((t > t0) & (t < t1))
            out[:, r, c] = (weights[idx[keep, 0], idx[keep, 1], idx[keep, 2]] * seg[keep, None]).sum(0)
    return out


def pose_affine(A, pose, centre):
    R = Rotation.from_rotvec(pose[:3]).as_matrix()
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = centre + pose[3:] - R @ centre
    return T @ A


def affine(spacing, angles_deg=(0, 0, 0), t=(0, 0, 0)):
    A = np.eye(4)
    A[:3, :3] = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix() @ np.diag(spacing)
    A[:3, 3] = t
    return A


def phantom(shape, rng, smooth=False):
    idx = np.stack(np.meshgrid(*[np.arange(k) for k in shape], indexing="ij"), -1).astype(float)
    c = (np.array(shape) - 1) / 2
    if smooth:
        r2 = np.sum(((idx - c) / (0.8 * np.array(shape))) ** 2, -1)
        return (-300 + 1400 * np.exp(-r2)).astype(np.float32)
    return rng.uniform(-1000, 1500, shape).astype(np.float32)


def cams_around(vol, n=3, size=(14, 11), ps=5.0):
    out = []
    for k in range(n):
        out.append(Camera.c_arm(sid=350, sdd=600, width=size[0], height=size[1], pixel_spacing=ps,
                                lao=-60 + 55 * k, cran=10 - 7 * k, isocenter=vol.centre + [3.0, -2.0, 1.0]))
    return out


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(7)
    A = affine([2.0, 2.5, 3.0], (8, -12, 20), (-20, 10, 30))
    vol = Volume(phantom((11, 9, 7), rng), A)
    return vol, cams_around(vol)


# ------------------------------------------------------------------ HU conversion
def test_hu_default_water_air_and_hu_definition():
    conv = get_hu_conversion()
    names = conv.names
    w = conv(np.array([-1000.0, 0.0, -2000.0]))
    assert names == ["air", "water", "cortical_bone"]
    np.testing.assert_allclose(w[0], [1, 0, 0])  # HU -1000 is air
    np.testing.assert_allclose(w[1], [0, 1, 0])  # HU 0 is water
    np.testing.assert_allclose(w[2], [1, 0, 0])  # below -1000: air
    # at the reference energy the mixture has mu = mu_w + HU (mu_w - mu_air)/1000 (the HU definition)
    E = 65.0
    mu = conv.mu([E])[:, 0]
    mu_a, mu_w = mu[0], mu[1]
    hu = np.array([-700.0, -20.0, 300.0, 1200.0])
    np.testing.assert_allclose(conv(hu) @ mu, mu_w + hu * (mu_w - mu_a) / 1000, rtol=1e-9)
    # derivative matches finite differences away from the knots
    h = np.array([-600.0, 500.0, 2500.0])
    np.testing.assert_allclose(conv.derivative(h), (conv(h + 1e-3) - conv(h - 1e-3)) / 2e-3, rtol=1e-6)


def test_hu_schneider_densities():
    conv = get_hu_conversion("schneider")
    rho_ref = np.array([m.density for m in conv.materials])
    # densities of the Schneider calibration (OpenGATE Schneider2000DensitiesTable.txt) at its points
    for hu, rho in [(-1000, 1.21e-3), (-98, 0.93), (14, 1.03), (23, 1.031), (100, 1.1199), (101, 1.0762),
                    (1600, 1.9642), (3000, 2.8)]:
        assert conv(np.array([float(hu)]))[0] @ rho_ref == pytest.approx(rho, rel=1e-9)
    with pytest.raises(KeyError, match="unknown HU conversion"):
        get_hu_conversion("nope")
    with pytest.raises(ValueError, match="non-decreasing"):
        get_hu_conversion({"materials": ["water"], "points": [[10, [1]], [0, [0]]]})


# ------------------------------------------------------------------ projector accuracy
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-9), (torch.float32, 2e-5)])
def test_siddon_matches_reference(case, dtype, tol):
    vol, cams = case
    conv = get_hu_conversion()
    wts = conv(vol.values)
    proj = VolumeProjector(vol, cams, dtype=dtype)
    L = proj.numpy()
    assert L.dtype == (np.float64 if dtype == torch.float64 else np.float32)
    for v, cam in enumerate(cams):
        ref = siddon_ref(wts, vol.affine, cam)
        assert ref.max() > 5  # the rays cross the volume
        err = np.abs(L[v] - ref).max() / ref.max()
        assert err <= tol, (v, err)  # float64 ~1e-13, float32 ~3e-6 measured


def test_pose_equals_moved_volume_and_several_views(case):
    vol, cams = case
    pose = np.array([0.2, -0.1, 0.15, 4.0, -3.0, 2.0])
    proj = VolumeProjector(vol, cams, dtype=torch.float64)
    L = proj.numpy(torch.tensor(pose))
    ref = siddon_ref(get_hu_conversion()(vol.values), pose_affine(vol.affine, pose, vol.centre), cams[1])
    assert np.abs(L[1] - ref).max() <= 1e-9 * ref.max()
    # several views per launch == one at a time; per-view poses
    poses = torch.tensor(np.stack([pose, 0.5 * pose, -pose]))
    Lv = proj.numpy(poses)
    for v, cam in enumerate(cams):
        one = VolumeProjector(vol, cam, dtype=torch.float64).numpy(poses[v])
        np.testing.assert_allclose(Lv[v], one[0], rtol=1e-12, atol=1e-12)
    # a stack of raw projection matrices (any scale and sign) gives the same images
    Ps = np.stack([k * c.P for k, c in zip((2.0, -0.5, 3.0), cams)])
    Lp = VolumeProjector.from_matrices(vol, Ps, cams[0].width, cams[0].height, dtype=torch.float64).numpy(poses)
    np.testing.assert_allclose(Lp, Lv, rtol=1e-10, atol=1e-10)
    # the scene transform (rotate_deg, translate, centre) is the mesh convention
    R = rotation_deg([10, -20, 30])
    moved = vol.with_transform(translate=[5, 6, -7], rotate_deg=[10, -20, 30], centre=[1, 2, 3])
    p0 = np.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(moved.index_to_world(p0), R @ (vol.index_to_world(p0) - [1, 2, 3]) + [1, 2, 3]
                               + [5, 6, -7], atol=1e-9)


def test_trilinear_error_bounded():
    rng = np.random.default_rng(3)
    A = affine([2.0, 2.0, 2.5], (0, 10, -5), (0, 0, 0))
    vol = Volume(phantom((16, 14, 12), rng, smooth=True), A)
    cams = cams_around(vol, 2, (12, 10), 6.0)
    conv = get_hu_conversion("water_bone")
    wts = conv(vol.values)
    proj = VolumeProjector(vol, cams, method="trilinear", step_mm=0.5, hu_conversion=conv, dtype=torch.float64)
    L = proj.numpy()
    # (a) against the exact integral of the trilinear field (a 40x finer midpoint sum)
    Ai = np.linalg.inv(vol.affine)
    for v, cam in enumerate(cams[:1]):
        ref = np.zeros_like(L[v])
        for r in range(cam.height):
            for c in range(cam.width):
                d = cam.M_inv @ np.array([c, r, 1.0])
                dl = np.linalg.norm(d)
                o, g = Ai[:3, :3] @ cam.source + Ai[:3, 3], Ai[:3, :3] @ d
                n = np.array(vol.shape)
                with np.errstate(divide="ignore"):
                    t1, t2 = (-0.5 - o) / g, (n - 0.5 - o) / g
                lo, hi = max(np.minimum(t1, t2).max(), 0), np.maximum(t1, t2).min()
                if hi <= lo:
                    continue
                k = int(np.ceil((hi - lo) * dl / 0.0125))
                lam = lo + (np.arange(k) + 0.5) * (hi - lo) / k
                p = o[:, None] + g[:, None] * lam[None]
                for m in range(wts.shape[3]):
                    ref[m, r, c] = map_coordinates(wts[..., m], p, order=1, mode="nearest").sum() * (hi - lo) / k * dl
        err = np.abs(L[v] - ref).max() / ref.max()
        assert err < 2e-4, err  # midpoint rule, step 0.5 mm on 2 mm voxels: ~5e-5 measured
    # (b) against the Siddon reference: a different model of the same voxels (cubes of constant
    # value), so they differ by the interpolation: on this smooth phantom (up to ~100 HU per voxel)
    # 2.6 % of the maximum at worst, 1.1 % on average (measured); the channel sum, the chord
    # (weights sum to 1 at HU >= 0), is the same
    for v, cam in enumerate(cams):
        ref = siddon_ref(wts, vol.affine, cam)
        err = np.abs(L[v] - ref)
        assert err.max() / ref.max() < 4e-2 and err.mean() / ref.mean() < 2e-2, (err.max(), err.mean())
        np.testing.assert_allclose(L[v].sum(0), ref.sum(0), rtol=1e-9, atol=1e-9)
    # (c) a uniform volume: the trilinear mode is exact (the edge value fills the outer half voxel)
    uni = Volume(np.full((6, 5, 4), 250.0, np.float32), A)
    Lt = VolumeProjector(uni, cams[0], method="trilinear", dtype=torch.float64).numpy()
    ref = siddon_ref(get_hu_conversion()(uni.values), uni.affine, cams[0])
    assert ref.max() > 5
    assert np.abs(Lt[0] - ref).max() <= 1e-9 * ref.max()


# ------------------------------------------------------------------ gradients
@pytest.mark.parametrize("method", ["siddon", "trilinear"])
def test_gradcheck_pose_and_values(method):
    rng = np.random.default_rng(11)
    A = affine([2.0, 2.5, 3.0], (5, 0, -10), (-3, 2, 1))
    hu = rng.uniform(50, 1400, (5, 4, 6))  # away from the conversion's knots (-1000, 0, hu_bone)
    hu[rng.random(hu.shape) < 0.4] *= -0.6
    vol = Volume(hu, A)
    cams = [Camera.c_arm(sid=300, sdd=500, width=5, height=4, pixel_spacing=6.0, lao=lao, cran=cr,
                         isocenter=vol.centre) for lao, cr in ((20, 10), (-70, 5))]
    proj = VolumeProjector(vol, cams, method=method, dtype=torch.float64)
    pose = torch.tensor([0.05, -0.03, 0.02, 1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q: proj(q), (pose,), eps=1e-6, atol=1e-5, rtol=1e-4)
    h = torch.tensor(hu, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: proj(pose.detach(), values=x), (h,), eps=1e-4, atol=1e-6, rtol=1e-4)


# ------------------------------------------------------------------ meshes inside volumes
def sphere_slots(cams, centre, radius, extra_obj=True):
    """Slots of an analytic sphere (object 0, excluded) + one stray slot of object 1 (not excluded)."""
    V, H, W = len(cams), cams[0].height, cams[0].width
    K = 3
    count = np.zeros((V, H, W), np.int32)
    face = np.zeros((V, H, W, K), np.int32)
    depth = np.zeros((V, H, W, K))
    chords = np.zeros((V, H, W, 2))
    for v, cam in enumerate(cams):
        dirs = cam.pixel_rays()
        for r in range(H):
            for c in range(W):
                d = dirs[r, c]
                oc = cam.source - centre
                b = oc @ d
                disc = b * b - (oc @ oc - radius ** 2)
                n = 0
                if extra_obj:
                    face[v, r, c, n] = 2  # object 1, not excluded: ignored
                    depth[v, r, c, n] = -(np.linalg.norm(oc) - 0.3 * radius)
                    n += 1
                if disc > 0:
                    t1, t2 = -b - np.sqrt(disc), -b + np.sqrt(disc)
                    face[v, r, c, n], depth[v, r, c, n] = 1, t2  # exit first: the kernel orders them
                    face[v, r, c, n + 1], depth[v, r, c, n + 1] = 0, -t1
                    chords[v, r, c] = (t1, t2)
                    n += 2
                count[v, r, c] = n
    return MeshSlots(count, face, depth, np.array([0, 0, 1], np.int32), np.array([1, 0], np.int32)), chords


@pytest.mark.parametrize("method", ["siddon", "trilinear"])
def test_mesh_inside_volume_analytic(method):
    A = affine([2.0, 2.5, 2.0], (0, 15, 0), (-10, 5, 0))
    vol = Volume(np.full((20, 16, 14), 700.0, np.float32), A)
    cams = cams_around(vol, 2, (16, 12), 3.0)
    centre = vol.centre + [2.0, -1.0, 1.5]
    slots, chords = sphere_slots(cams, centre, 9.0)
    proj = VolumeProjector(vol, cams, method=method, dtype=torch.float64)
    L = proj.numpy(mesh=slots)
    w = get_hu_conversion()(np.array([700.0]))[0]
    for v, cam in enumerate(cams):
        d = cam.pixel_rays()
        Ai = np.linalg.inv(vol.affine)
        o = Ai[:3, :3] @ cam.source + Ai[:3, 3]
        g = d @ Ai[:3, :3].T
        n = np.array(vol.shape)
        with np.errstate(divide="ignore"):
            t1, t2 = (-0.5 - o) / g, (n - 0.5 - o) / g
        box = np.clip(np.maximum(t1, t2).min(-1) - np.minimum(t1, t2).max(-1).clip(0), 0, None)  # mm
        sph = chords[v, :, :, 1] - chords[v, :, :, 0]
        assert sph.max() > 15 and (sph > 0).sum() > 20
        expect = w[:, None, None] * (box - sph)[None]
        np.testing.assert_allclose(L[v], expect, atol=1e-9 * expect.max())
    # the numpy Siddon with the same intervals removed agrees on a random volume too
    rng = np.random.default_rng(5)
    vol2 = Volume(phantom(vol.shape, rng), A)
    L2 = VolumeProjector(vol2, cams, dtype=torch.float64).numpy(mesh=slots)
    ref = siddon_ref(get_hu_conversion()(vol2.values), A, cams[0],
                     excl=lambda r, c: [tuple(chords[0, r, c])] if chords[0, r, c, 1] > 0 else [])
    assert np.abs(L2[0] - ref).max() <= 1e-9 * ref.max()


@pytest.mark.parametrize("method", ["siddon", "trilinear"])
def test_mesh_slot_depth_gradients(method):
    A = affine([2.0, 2.0, 2.0], (0, 0, 10), (0, 0, 0))
    rng = np.random.default_rng(2)
    vol = Volume(rng.uniform(100, 1400, (8, 7, 6)), A)
    cams = cams_around(vol, 1, (6, 5), 4.0)
    slots, chords = sphere_slots(cams, vol.centre, 4.5)
    proj = VolumeProjector(vol, cams, method=method, dtype=torch.float64)
    sd = torch.tensor(slots.slot_depth, requires_grad=True)
    pose = torch.tensor([0.02, 0.01, -0.03, 0.3, 0.2, -0.1], dtype=torch.float64, requires_grad=True)

    def f(q, s):
        return proj(q, mesh=MeshSlots(slots.count, slots.slot_face, s, slots.face_obj, slots.excl_obj))

    assert torch.autograd.gradcheck(f, (pose, sd), eps=1e-6, atol=1e-5, rtol=1e-4)
    # uniform volume: dL/d(depth) = -c at each excluded boundary, 0 for the stray slot
    uni = Volume(np.full(vol.shape, 400.0, np.float32), A)
    p2 = VolumeProjector(uni, cams, method=method, dtype=torch.float64)
    sd2 = torch.tensor(slots.slot_depth, requires_grad=True)
    out = p2(mesh=MeshSlots(slots.count, slots.slot_face, sd2, slots.face_obj, slots.excl_obj))
    out.sum().backward()
    cw = get_hu_conversion()(np.array([400.0]))[0].sum()
    n = slots.count[0]
    hit = n == 3
    assert hit.sum() > 3
    np.testing.assert_allclose(sd2.grad[0][hit][:, 1:].numpy(), -cw, rtol=1e-9)
    np.testing.assert_array_equal(sd2.grad[0][..., 0].numpy(), 0.0)


# ------------------------------------------------------------------ loaders
def _write_dicom_series(folder, hu, A, uid=None, slope=2.0, intercept=-1024.0, skip=(), tilt=None, shear=0.0,
                        prefix="s"):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    os.makedirs(folder, exist_ok=True)
    uid = uid or generate_uid()
    X = A[:3, 0] / np.linalg.norm(A[:3, 0])
    Y = A[:3, 1] / np.linalg.norm(A[:3, 1])
    cs, rs = np.linalg.norm(A[:3, 0]), np.linalg.norm(A[:3, 1])
    for k in range(hu.shape[2]):
        if k in skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.SeriesInstanceUID = uid
        ds.StudyInstanceUID = "1.2.3.4"
        ipp = A[:3, 3] + k * A[:3, 2] + k * shear * X
        ds.ImagePositionPatient = [f"{x:.6f}" for x in ipp]
        ds.ImageOrientationPatient = [f"{x:.8f}" for x in np.r_[X, Y]]
        ds.PixelSpacing = [f"{rs:.6f}", f"{cs:.6f}"]
        if tilt is not None:
            ds.GantryDetectorTilt = str(tilt)
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = str(slope), str(intercept)
        stored = np.round((hu[:, :, k].T - intercept) / slope).astype("<i2")
        ds.PixelData = stored.tobytes()
        # reversed file names: the loader sorts by position, not by name
        ds.save_as(os.path.join(folder, f"{prefix}{hu.shape[2] - k:03d}.dcm"), enforce_file_format=True)
    return uid


def _oblique_lps():
    R = Rotation.from_euler("xyz", [0, 0, 25], degrees=True).as_matrix()
    A = np.eye(4)
    A[:3, :3] = R @ np.diag([0.8, 0.9, 2.5])
    A[:3, 3] = [-40.0, 25.0, 100.0]
    return A


def test_loaders_agree_on_world_coordinates(tmp_path):
    import nibabel as nib

    rng = np.random.default_rng(9)
    hu = (2.0 * rng.integers(-500, 1000, (6, 5, 4)) - 1024.0).astype(np.float32)  # exact through slope 2
    A = _oblique_lps()
    _write_dicom_series(tmp_path / "dcm", hu, A)
    # a stray non-DICOM file in the folder is ignored
    (tmp_path / "dcm" / "notes.txt").write_text("not dicom")
    nib.save(nib.Nifti1Image(hu, np.diag([-1.0, -1, 1, 1]) @ A), str(tmp_path / "ct.nii.gz"))
    np.save(tmp_path / "ct.npy", hu)
    np.savetxt(tmp_path / "ct.affine.txt", A)
    vols = [Volume.load(tmp_path / "dcm"), Volume.load(tmp_path / "ct.nii.gz"), Volume.load(tmp_path / "ct.npy")]
    Volume(hu, A).save(tmp_path / "b.npz")
    vols.append(Volume.load(tmp_path / "b.npz"))
    ijk = np.array([[0, 0, 0], [5, 4, 3], [2, 3, 1]], float)
    world = A[:3, :3] @ ijk.T + A[:3, 3:4]
    for v in vols:
        np.testing.assert_array_equal(v.values, hu)
        np.testing.assert_allclose(v.index_to_world(ijk), world.T, atol=2e-5)
    with pytest.raises(FileExistsError):
        Volume(hu, A).save(tmp_path / "b.npz")


def test_dicom_series_errors(tmp_path):
    hu = np.zeros((4, 3, 5), np.float32)
    A = _oblique_lps()
    _write_dicom_series(tmp_path / "gap", hu, A, skip=(2,))
    with pytest.raises(VolumeError, match="missing slices"):
        Volume.load(tmp_path / "gap")
    _write_dicom_series(tmp_path / "mix", hu, A)
    _write_dicom_series(tmp_path / "mix", hu, A, prefix="t")
    with pytest.raises(VolumeError, match="mixed series"):
        Volume.load(tmp_path / "mix")
    _write_dicom_series(tmp_path / "tilt", hu, A, tilt=12.0)
    with pytest.raises(VolumeError, match="gantry tilt"):
        Volume.load(tmp_path / "tilt")
    _write_dicom_series(tmp_path / "shear", hu, A, shear=0.4)
    with pytest.raises(VolumeError, match="gantry tilt"):
        Volume.load(tmp_path / "shear")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VolumeError, match="no DICOM"):
        Volume.load(tmp_path / "empty")


# ------------------------------------------------------------------ bad input
def test_bad_input(tmp_path, case):
    vol, cams = case
    A = np.eye(4)
    with pytest.raises(ValueError, match="NaN"):
        Volume(np.full((2, 2, 2), np.nan), A)
    with pytest.raises(ValueError, match="singular"):
        Volume(np.zeros((2, 2, 2)), np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="empty"):
        Volume(np.zeros((0, 2, 2)), A)
    with pytest.raises(ValueError, match="3-D"):
        Volume(np.zeros((2, 2)), A)
    with pytest.raises(TypeError, match="real numbers"):
        Volume(np.zeros((2, 2, 2), complex), A)
    with pytest.raises(FileNotFoundError):
        Volume.load(tmp_path / "nope.nii.gz")
    np.save(tmp_path / "x.npy", np.zeros((2, 2, 2)))
    with pytest.raises(FileNotFoundError, match="affine.txt"):
        Volume.load(tmp_path / "x.npy")
    with pytest.raises(ValueError, match="method"):
        VolumeProjector(vol, cams, method="nearest")
    with pytest.raises(TypeError, match="dtype"):
        VolumeProjector(vol, cams, dtype=torch.float16)
    proj = VolumeProjector(vol, cams)
    with pytest.raises(ValueError, match="pose"):
        proj(torch.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        proj(torch.tensor([0, 0, 0, float("nan"), 0, 0]))
    with pytest.raises(ValueError, match="values"):
        proj(values=torch.zeros(3, 3, 3))
    with pytest.raises(ValueError, match="slot_depth"):
        V, H, W = len(cams), cams[0].height, cams[0].width
        proj(mesh=MeshSlots(np.zeros((V, H, W)), np.zeros((V, H, W, 2)), np.zeros((V, H, W, 3)), [0], [1]))
    with pytest.raises(ValueError, match="face ids"):
        proj(mesh=MeshSlots(np.ones((V, H, W)), np.full((V, H, W, 2), 4), np.zeros((V, H, W, 2)), [0], [1]))
    with pytest.raises(ValueError, match="one detector size"):
        VolumeProjector(vol, [cams[0], Camera.c_arm(sid=300, sdd=500, width=3, height=3, pixel_spacing=1.0)])


@pytest.mark.skipif(not os.path.exists(os.path.join(SHARED, "ct.nii.gz")), reason=f"real CT not present in {SHARED}")
def test_real_ct_loads_and_projects():
    vol = Volume.load(os.path.join(SHARED, "ct.nii.gz"))
    assert vol.shape == (122, 101, 112)
    np.testing.assert_allclose(vol.spacing, 3.0, rtol=1e-4)
    cam = Camera.c_arm(sid=800, sdd=1200, width=24, height=20, pixel_spacing=18.0, isocenter=vol.centre)
    L = VolumeProjector(vol, cam).numpy()
    assert np.all(np.isfinite(L)) and L[0, 1].max() > 100  # mm of water through the pelvis
