"""CT volumes and meshes in one differentiable pipeline (issue 11): the two-material problem against
analytic chords, the air term, and float64 gradients w.r.t. the volume pose and the vertices of a mesh
inside the volume."""
import numpy as np
import pytest
import torch

import taichi_xray as tx
from taichi_xray.objects import Volume
from taichi_xray.physics import Spectrum, get_material
from taichi_xray.pipeline import Pipeline, VolumeObject
from taichi_xray.primitives import icosphere


def box_volume(n=40, sp=2.0, hu=0.0, name="patient"):
    A = np.eye(4)
    A[:3, :3] *= sp
    A[:3, 3] = -sp * (n - 1) / 2
    return Volume(np.full((n, n, n), hu, np.float32), A, name=name)


def box_chord(cam, half):
    d, s = cam.pixel_rays(), cam.source
    with np.errstate(divide="ignore"):
        t1, t2 = (-half - s) / d, (half - s) / d
    tn = np.clip(np.minimum(t1, t2).max(-1), 0, None)
    return np.clip(np.maximum(t1, t2).min(-1) - tn, 0, None)


@pytest.mark.parametrize("air", [False, True])
def test_mesh_inside_a_volume_is_the_two_material_problem(air):
    vol = box_volume()
    ball = tx.Mesh(*icosphere(15.0, 3, centre=(5.0, -3.0, 2.0)), "screw")
    cam = tx.Camera.c_arm(sid=400.0, sdd=700.0, width=48, height=40, pixel_spacing=3.0, lao=20.0, cran=10.0)
    pipe = Pipeline([ball], cam, materials=["Ti"], parents=[1], volumes=[VolumeObject(vol)],
                    spectrum=Spectrum.monochromatic(60.0), air=air, dtype=torch.float64, physics_dtype=torch.float64)
    LI = pipe.render()[0].numpy()
    box = box_chord(cam, 40.0)
    Lb = tx.path_length(ball, cam, dtype=torch.float64)
    mu = {k: get_material(k).mu([60.0])[0] for k in ("water", "Ti", "air")}
    expect = mu["water"] * (box - Lb) + mu["Ti"] * Lb + (mu["air"] * (cam.ray_lengths() - box) if air else 0.0)
    assert Lb.max() > 25 and box.max() > 75
    np.testing.assert_allclose(LI, expect, atol=1e-9)


def test_gradients_volume_pose_and_mesh_inside_float64():
    rng = np.random.default_rng(2)
    n, sp = 12, 4.0
    A = np.eye(4)
    A[:3, :3] *= sp
    A[:3, 3] = -sp * (n - 1) / 2
    hu = rng.uniform(-200, 900, (n, n, n)).astype(np.float32)
    vol = Volume(hu, A, name="ct")
    V, F = icosphere(8.0, 2, centre=(2.0, 1.0, -1.0))
    cam = tx.Camera.c_arm(sid=300.0, sdd=500.0, width=16, height=14, pixel_spacing=6.0, lao=15.0, cran=5.0)
    pipe = Pipeline([F], cam, materials=["Ti"], parents=[1], volumes=[VolumeObject(vol)],
                    spectrum=Spectrum(np.array([50.0, 70.0]), np.array([1.0, 0.6])), dtype=torch.float64,
                    physics_dtype=torch.float64)
    v = torch.tensor(V, dtype=torch.float64, requires_grad=True)
    pose = torch.tensor([0.02, -0.03, 0.01, 0.5, -0.4, 0.3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, p: pipe.render_torch([v], volume_poses={"ct": p}), (v, pose),
                                    eps=1e-6, atol=1e-5, rtol=1e-4, nondet_tol=1e-9)


def test_volume_pose_is_recovered_by_gradient_descent():
    """The DiffDRR use case: register a CT volume's rigid pose to its own DRRs (two views)."""
    rng = np.random.default_rng(4)
    n, sp = 24, 4.0
    A = np.eye(4)
    A[:3, :3] *= sp
    A[:3, 3] = -sp * (n - 1) / 2
    zz, yy, xx = np.meshgrid(*[np.arange(n)] * 3, indexing="ij")
    hu = (-1000 + 1000 * (((xx - 11.5) / 10) ** 2 + ((yy - 11.5) / 8) ** 2 + ((zz - 11.5) / 11) ** 2 < 1)
          + 900 * (((xx - 14) / 3) ** 2 + ((yy - 9) / 4) ** 2 + ((zz - 12) / 9) ** 2 < 1)).astype(np.float32)
    vol = Volume(hu, A, name="ct")
    cams = [tx.Camera.c_arm(sid=500.0, sdd=800.0, width=32, height=32, pixel_spacing=5.0, lao=a) for a in (0.0, 90.0)]
    pipe = Pipeline([], cams, volumes=[VolumeObject(vol)], spectrum=Spectrum.monochromatic(60.0), materials=[],
                    dtype=torch.float64, physics_dtype=torch.float64)
    true = torch.tensor([0.04, -0.03, 0.05, 4.0, -3.0, 2.0], dtype=torch.float64)
    with torch.no_grad():
        target = pipe.render_torch([], volume_poses={"ct": true})
    p = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([p], lr=0.02)
    scale = torch.tensor([1.0, 1.0, 1.0, 100.0, 100.0, 100.0], dtype=torch.float64)  # rad and mm on one footing
    for _ in range(150):
        opt.zero_grad()
        loss = ((pipe.render_torch([], volume_poses={"ct": p * scale}) - target) ** 2).mean()
        loss.backward()
        opt.step()
    got = (p * scale).detach()
    assert torch.abs(got[3:] - true[3:]).max() < 0.5 and torch.abs(got[:3] - true[:3]).max() < np.deg2rad(0.5), got
    # a pose for a volume the pipeline does not have, given twice, or of the wrong shape is an error,
    # never a render without the pose
    for bad, msg in (({"cx": true}, "no volume named 'cx'"), ({1: true}, "out of range"),
                     ({"ct": true, 0: true}, "twice"), ({"ct": true[:3]}, r"shape \(6,\)")):
        with pytest.raises(ValueError, match=msg):
            pipe.render_torch([], volume_poses=bad)
    with pytest.raises(TypeError, match="dict"):
        pipe.render_torch([], volume_poses=[true])
