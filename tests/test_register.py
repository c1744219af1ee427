"""Tests for taichi_xray.fit.register and taichi_xray.fit.landmarks.

A small synthetic phantom (a tilted torus and an off-centre ellipsoid, two
views, 64x64 px) is rendered at a known pose; registrations start a few mm /
degrees away and must come back. No data from /work/shared is needed except in
the one landmark test marked to skip without it.
"""
import os

import numpy as np
import pytest
import torch

from taichi_xray.camera import Camera
from taichi_xray.fit.landmarks import PELVIS_LANDMARK_NAMES, extreme_vertex, pelvis_landmarks
from taichi_xray.fit.metrics import rotation_error_deg
from taichi_xray.fit.register import RegistrationResult, downsample_camera, register, render_posed
from taichi_xray.fit.ssm import ShapeModel, synthetic_population
from taichi_xray.primitives import ellipsoid, rotation_matrix, torus
from taichi_xray.torch import XRayRenderer

from conftest import SHARED


@pytest.fixture(scope="module")
def scene():
    V1, F1 = torus(R=40.0, r=12.0, n=32, m=12, rotation=rotation_matrix((1, 0, 0), 60.0))
    V2, F2 = ellipsoid((25.0, 15.0, 10.0), centre=(30.0, 10.0, 35.0), n_lat=10, n_lon=20)
    cams = [Camera.c_arm(sid=600.0, sdd=1000.0, width=64, height=64, pixel_spacing=3.0, lao=a) for a in (0.0, 90.0)]
    # the torus and the ellipsoid overlap: allowed explicitly (both materials then add up there)
    r = XRayRenderer([F1, F2], cams, materials=["cortical_bone", "soft_tissue"], overlap="allow")
    verts = [V1, V2]
    c = np.concatenate(verts).mean(0)
    target = render_posed(r, verts, np.zeros(3), np.zeros(3), c)
    return dict(r=r, verts=verts, faces=[F1, F2], c=c, target=target)


INIT = (np.deg2rad([3.0, -4.0, 2.0]), np.array([5.0, -4.0, 3.0]))


def _errors(res):
    return rotation_error_deg(res.rotvec, np.zeros(3)), float(np.linalg.norm(res.translation))


def test_pose_recovery_adam(scene):
    res = register(scene["r"], scene["target"], INIT, vertices=scene["verts"], optimizer="adam",
                   schedule=[(2, 40, 1.0), (1, 30, 0.2)], patience=10, progress=False)
    rot, tr = _errors(res)
    assert rot < 1.0 and tr < 1.0, (rot, tr)
    assert res.loss < 0.01
    # history: one loss and one parameter row per iteration, first row = the initial pose
    assert len(res.loss_history) == res.n_iterations == len(res.param_history) == len(res.level_history)
    assert res.param_history.shape[1] == 6
    np.testing.assert_allclose(res.param_history[0], np.r_[np.rad2deg(INIT[0]), INIT[1]], atol=1e-9)
    assert res.loss_history[-1] < res.loss_history[0]
    assert set(res.level_history.tolist()) == {0, 1}
    assert res.time_s > 0 and res.beta is None


def test_pose_recovery_lbfgs(scene):
    res = register(scene["r"], scene["target"], INIT, vertices=scene["verts"], optimizer="lbfgs",
                   schedule=[(2, 15, 1.0), (1, 15, 1.0)], patience=5, progress=False)
    rot, tr = _errors(res)
    assert rot < 1.0 and tr < 1.0, (rot, tr)
    assert res.n_evaluations >= res.n_iterations


def test_multistart_keeps_best(scene):
    res = register(scene["r"], scene["target"], INIT, vertices=scene["verts"], schedule=[(4, 6, 1.0)],
                   n_starts=3, start_rot_deg=8.0, start_trans_mm=15.0, seed=3, patience=None, progress=False)
    assert res.start_losses.shape == (3,) and res.start_poses.shape == (3, 6)
    assert res.start == int(np.argmin(res.start_losses))
    assert res.loss == pytest.approx(res.start_losses.min())
    np.testing.assert_allclose(res.start_poses[0], np.r_[np.rad2deg(INIT[0]), INIT[1]])
    assert np.abs(res.start_poses[1:] - res.start_poses[0]).max() > 0.1  # perturbed starts
    # same seed -> same starts
    res2 = register(scene["r"], scene["target"], INIT, vertices=scene["verts"], schedule=[(4, 1, 1.0)],
                    n_starts=3, start_rot_deg=8.0, start_trans_mm=15.0, seed=3, progress=False)
    np.testing.assert_array_equal(res.start_poses, res2.start_poses)
    # select_after: only the best start runs the later levels
    res3 = register(scene["r"], scene["target"], INIT, vertices=scene["verts"], schedule=[(4, 3, 1.0), (2, 2, 0.5)],
                    n_starts=2, seed=3, select_after=1, patience=None, progress=False)
    assert np.isfinite(res3.start_losses).sum() == 1 and res3.level_history.max() == 1


def test_early_stopping(scene):
    # min_delta larger than any possible improvement: stops after `patience` non-improving steps
    res = register(scene["r"], scene["target"], INIT, vertices=scene["verts"], schedule=[(4, 50, 1.0)],
                   patience=3, min_delta=10.0, progress=False)
    assert res.stopped_early and res.n_iterations == 4
    res = register(scene["r"], scene["target"], INIT, vertices=scene["verts"], schedule=[(4, 5, 1.0)],
                   patience=None, progress=False)
    assert not res.stopped_early and res.n_iterations == 5


def test_callable_renderer_and_mask(scene):
    r = scene["r"]
    calls = []

    def fn(parts):
        calls.append(1)
        return r(parts)

    mask = np.ones((64, 64))
    mask[:, :8] = 0
    res = register(fn, scene["target"], INIT, vertices=scene["verts"], schedule=[(2, 8, 1.0)], mask=mask,
                   loss="multiscale_ngc", patience=None, progress=False)
    assert len(calls) >= 8 and res.loss_history[-1] < res.loss_history[0]


def test_shape_and_pose(scene):
    verts, faces = scene["verts"], scene["faces"]
    allv = np.concatenate(verts)
    allf = np.concatenate([faces[0], faces[1] + len(verts[0])])
    pop = synthetic_population(allv, allf, n=12, seed=1, scale_sd=0.08, displacement_mm=3.0)
    ssm = ShapeModel.fit(pop, allf, n_components=2)
    beta_true = np.array([1.5, -1.0])
    sizes = [len(v) for v in verts]
    target = render_posed(scene["r"], verts, np.zeros(3), np.zeros(3), scene["c"], shape_model=ssm, beta=beta_true)
    init = (np.deg2rad([2.0, -2.0, 1.0]), np.array([2.0, -2.0, 2.0]))
    res = register(scene["r"], target, init, vertices=verts, shape_model=ssm, mode="pose+shape", centre=scene["c"],
                   schedule=[(2, 40, 0.5), (1, 30, 0.2)], prior_weight=1e-3, patience=10, progress=False)
    assert res.beta.shape == (2,)
    np.testing.assert_allclose(res.beta, beta_true, atol=0.5)
    rot, tr = _errors(res)
    assert rot < 1.5 and tr < 1.5, (rot, tr)
    # vertex error of the fitted shape well below the initial one
    v_true = ssm.vertices(beta_true)
    v_fit = res.transform(ssm.vertices(res.beta))
    assert np.abs(v_fit - v_true).max() < 0.5 * np.abs(ssm.mean - v_true).max() + 1.0
    assert sum(sizes) == ssm.n_vertices
    # shape only: pose fixed at the truth
    res_s = register(scene["r"], target, (np.zeros(3), np.zeros(3)), vertices=verts, shape_model=ssm, mode="shape",
                     centre=scene["c"], schedule=[(2, 20, 0.5)], prior_weight=1e-3, progress=False)
    np.testing.assert_array_equal(res_s.rotvec, 0.0)
    np.testing.assert_array_equal(res_s.translation, 0.0)


def test_bad_input(scene):
    r, t, v = scene["r"], scene["target"], scene["verts"]
    with pytest.raises(ValueError, match="mode"):
        register(r, t, None, vertices=v, mode="affine", progress=False)
    with pytest.raises(ValueError, match="shape_model"):
        register(r, t, None, vertices=v, mode="pose+shape", progress=False)
    with pytest.raises(ValueError, match="cameras"):
        register(r, t[:1], None, vertices=v, progress=False)
    with pytest.raises(ValueError, match="loss"):
        register(r, t, None, vertices=v, loss="mutual_information", progress=False)
    with pytest.raises(ValueError, match="optimizer"):
        register(r, t, None, vertices=v, optimizer="sgd", progress=False)
    with pytest.raises(ValueError, match="factor"):
        register(r, t, None, vertices=v, schedule=[(0, 5, 1.0)], progress=False)
    with pytest.raises(ValueError, match="3x3"):
        register(r, t, None, vertices=v, schedule=[(32, 5, 1.0)], progress=False)
    with pytest.raises(ValueError, match="mask"):
        register(r, t, None, vertices=v, mask=np.ones((5, 5)), progress=False)
    with pytest.raises(TypeError, match="init_pose"):
        register(r, t, "identity", vertices=v, progress=False)
    with pytest.raises(ValueError, match="template"):
        register(r, t, None, progress=False)


def test_downsample_camera_matches_pooling():
    cam = Camera.c_arm(sid=600.0, sdd=1000.0, width=64, height=48, pixel_spacing=3.0, lao=20.0, cran=10.0)
    for s in (2, 3, 4):
        cs = downsample_camera(cam, s)
        assert (cs.width, cs.height) == (64 // s, 48 // s)
        assert cs.pixel_spacing == pytest.approx(3.0 * s)
        pts = np.random.default_rng(0).uniform(-80, 80, (20, 3))
        uv, w = cam.project(pts)
        uvs, ws = cs.project(pts)
        # the coarse pixel (r, c) has its centre at the mean of fine pixels s*r .. s*r+s-1
        np.testing.assert_allclose(uvs, (uv - (s - 1) / 2) / s, atol=1e-9)
        np.testing.assert_allclose(cs.source, cam.source, atol=1e-9)
    assert downsample_camera(cam, 1) is cam
    with pytest.raises(ValueError):
        downsample_camera(cam, 0)
    with pytest.raises(TypeError):
        downsample_camera("cam", 2)


def test_result_transform():
    res = RegistrationResult(rotvec=np.deg2rad([0.0, 0.0, 90.0]), translation=np.array([1.0, 2.0, 3.0]),
                             centre=np.array([10.0, 0.0, 0.0]), beta=None, loss=0.0, loss_history=np.zeros(0),
                             param_history=np.zeros((0, 6)), level_history=np.zeros(0, int), time_s=0.0,
                             n_iterations=0, n_evaluations=0)
    np.testing.assert_allclose(res.transform([[11.0, 0.0, 0.0]]), [[11.0, 3.0, 3.0]], atol=1e-12)
    np.testing.assert_allclose(res.rotvec_deg, [0, 0, 90])
    pose = res.to_rigid_pose(torch.float64)
    np.testing.assert_allclose(pose(torch.tensor([[11.0, 0.0, 0.0]], dtype=torch.float64)).detach().numpy(), [[11.0, 3.0, 3.0]],
                               atol=1e-12)


# ----------------------------------------------------------------------------- landmarks
def _toy_pelvis():
    hl = ellipsoid((40.0, 25.0, 60.0), centre=(90.0, 0.0, 0.0), n_lat=12, n_lon=24)[0]
    hl = hl + np.where(hl[:, 2:3] > 20, [0.0, -0.3, 0.0] * (hl[:, 2:3] - 20), 0.0)  # flare the top forward
    hr = hl * [-1.0, 1.0, 1.0]
    sa = ellipsoid((30.0, 15.0, 45.0), centre=(0.0, 40.0, 10.0), n_lat=10, n_lon=20)[0]
    return hl, hr, sa


def test_landmarks_definitions_and_symmetry():
    hl, hr, sa = _toy_pelvis()
    lm = pelvis_landmarks(hl, hr, sa)
    assert lm.indices.shape == (14,) and lm.names == PELVIS_LANDMARK_NAMES and len(set(lm.names)) == 14
    allv = np.concatenate([hl, hr, sa])
    P = lm.positions(allv)
    # brute-force checks of a few definitions on the left hip
    z = hl[:, 2]
    zf = (z - z.min()) / (z.max() - z.min())
    assert P[2, 2] == pytest.approx(z.max())  # iliac crest top
    assert P[0, 1] == pytest.approx(hl[zf >= 0.55, 1].min())  # ASIS: most anterior of the upper part
    assert P[3, 0] == pytest.approx(hl[zf <= 0.45, 0].min())  # pubic: most medial of the lower part
    assert P[13, 2] == pytest.approx(sa[:, 2].min())  # sacral apex
    # the right hip is the mirror image of the left: so are its landmarks
    np.testing.assert_allclose(P[6:12], P[0:6] * [-1, 1, 1], atol=1e-9)
    # deterministic
    np.testing.assert_array_equal(pelvis_landmarks(hl, hr, sa).indices, lm.indices)
    # landmarks are vertex indices: they move with the mesh
    R = rotation_matrix((0, 0, 1), 10.0)
    np.testing.assert_allclose(lm.positions(allv @ R.T + 5.0), P @ R.T + 5.0)
    with pytest.raises(ValueError, match="swapped"):
        pelvis_landmarks(hr, hl, sa)
    with pytest.raises(ValueError):
        extreme_vertex(hl, [1.0, 0, 0], np.zeros(len(hl), bool))


@pytest.mark.skipif(not os.path.isfile(os.path.join(SHARED, "labels.nii.gz")),
                    reason="pelvis CT labels not available (../shared/data/pelvis-ct beside the checkout)")
def test_landmarks_on_real_pelvis():
    from taichi_xray.ct import labels_to_meshes

    ms = labels_to_meshes(os.path.join(SHARED, "labels.nii.gz"), labels={"hl": 90, "hr": 91, "sa": 92},
                          smooth_iterations=10, target_faces=3000)
    lm = pelvis_landmarks(ms["hl"], ms["hr"], ms["sa"])
    P = lm.positions(np.concatenate([ms[k].vertices for k in ("hl", "hr", "sa")]))
    assert len(set(lm.indices.tolist())) == 14
    assert np.all(P[0:6, 0] > P[13, 0] - 20) and np.all(P[6:12, 0] < P[13, 0] + 20)  # left side is +x
    assert P[0, 1] < P[1, 1] and P[6, 1] < P[7, 1]  # ASIS anterior of PSIS
    assert P[2, 2] > P[4, 2] and P[12, 2] > P[13, 2]  # crest above ischium, promontory above apex


# ----------------------------------------------------------------------------------------------
# issue 10: masks at every level, moving subsets
# ----------------------------------------------------------------------------------------------
def _shutter_targets(scene):
    """The target, and the same with collimator blades outside a mask (high values with sharp edges)."""
    t = np.asarray(scene["target"], np.float64)
    V, H, W = t.shape
    mask = np.zeros((H, W), bool)
    mask[9:57, 11:53] = True  # not aligned to 2x2 or 4x4 blocks: the pooling must still keep the blades out
    blades = t.copy()
    blades[:, ~mask] = 50.0 + np.random.default_rng(3).uniform(0, 5, (V, int((~mask).sum())))
    return t, blades, mask


@pytest.mark.parametrize("loss", ["ngc", "patch_ngc", "robust_ngc", "robust_ngc_blur"])
def test_shutter_outside_the_mask_has_no_effect_at_any_level(scene, loss):
    from taichi_xray.fit.losses import pool_mask, robust_ngc_loss

    if loss == "robust_ngc_blur":  # the pre-blur (normalised convolution) must keep the blades out too
        loss = lambda a, b, m: robust_ngc_loss(a, b, mask=m, sigma=1.0)  # noqa: E731

    t, blades, mask = _shutter_targets(scene)
    # a deterministic renderer: bitwise equal images and gradients from the same vertices
    r = XRayRenderer(scene["faces"], scene["r"].cameras, materials=["cortical_bone", "soft_tissue"],
                     overlap="allow", deterministic=True)
    kw = dict(vertices=scene["verts"], schedule=[(4, 3, 1.0), (2, 3, 0.5), (1, 3, 0.2)], patience=None,
              mask=mask, loss=loss, progress=False)
    a = register(r, t, INIT, **kw)
    b = register(r, blades, INIT, **kw)
    np.testing.assert_array_equal(a.loss_history, b.loss_history)   # the loss at every level ...
    np.testing.assert_array_equal(a.param_history, b.param_history)  # ... and its gradient (same steps)
    # without the mask the blades change everything
    c = register(r, blades, INIT, **{**kw, "mask": None})
    assert np.abs(c.loss_history - a.loss_history).max() > 0.05
    # the weights the loss sees: min-pooled, then eroded so that no Sobel stencil leaves the field
    for s in (1, 2, 4):
        m = pool_mask(torch.tensor(mask, dtype=torch.float64), s).numpy()
        fine = np.zeros_like(mask)
        rr, cc = np.nonzero(m > 0)
        for dr in (-1, 0, 1):  # every fine pixel under the 3x3 stencil of every kept coarse pixel
            for dc in (-1, 0, 1):
                for i in range(s):
                    for j in range(s):
                        fine[(rr + dr) * s + i, (cc + dc) * s + j] = True
        assert mask[fine].all() and m.sum() > 0


def test_move_a_subset_keeps_coarse_rendering(scene):
    verts, c1 = scene["verts"], scene["verts"][1].mean(0)
    rv_true, t_true = np.array([0.0, 0.0, 0.0]), np.array([4.0, -3.0, 2.5])
    target = render_posed(scene["r"], verts, rv_true, t_true, c1, moving=[1])
    # the fixed torus is where the target has it; only the ellipsoid (object 1) moves
    r = XRayRenderer(scene["faces"], scene["r"].cameras, materials=["cortical_bone", "soft_tissue"], overlap="allow",
                     names=["torus", "ellipsoid"])
    res = register(r, target, None, vertices=verts, moving="ellipsoid", schedule=[(2, 40, 1.0), (1, 30, 0.3)],
                   patience=10, progress=False)
    np.testing.assert_allclose(res.centre, c1)  # default centre: the moving objects' centroid
    assert res.moving == (1,)
    # (a 25 x 15 x 10 mm ellipsoid seen with 3 mm pixels: its rotation is weakly determined)
    assert np.linalg.norm(res.translation - t_true) < 1.0 and rotation_error_deg(res.rotvec, np.zeros(3)) < 3.0
    assert 2 in r._scaled  # the coarse level rendered on a binned detector (no full-size render + pooling)
    assert res.level_losses.shape == (2,) and np.all(np.isfinite(res.level_losses))
    with pytest.raises(ValueError, match="no object named 'elipsoid'.*ellipsoid"):
        register(r, target, None, vertices=verts, moving="elipsoid", progress=False)
    with pytest.raises(ValueError, match="out of range"):
        register(r, target, None, vertices=verts, moving=[2], progress=False)
    with pytest.raises(ValueError, match="no object named 'ellipsoid'.*object 0, object 1"):  # default names
        register(scene["r"], target, None, vertices=verts, moving="ellipsoid", progress=False)
    with pytest.raises(ValueError, match="by name"):  # a plain callable has no names
        register(lambda parts: r(parts), target, None, vertices=verts, moving="ellipsoid", progress=False)
    with pytest.raises(ValueError, match=r"mask weights must lie in \[0, 1\]"):
        register(r, target, None, vertices=verts, mask=np.full((64, 64), 2.0), progress=False)
