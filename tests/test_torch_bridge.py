"""Differentiable rendering: gradcheck in float64, finite differences in float32, pose recovery."""
import numpy as np
import pytest
import torch

import taichi_xray as tx
from taichi_xray.kernels import raster as kr
from taichi_xray.physics import Spectrum
from taichi_xray.torch import XRayRenderer, path_lengths

from reference import box, icosphere, torus


def small_camera(width=20, height=16, f=30.0, dist=100.0):
    K = np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1.0]])
    return tx.Camera.from_intrinsics(K, np.eye(3), [0, 0, dist], width, height)


def jittered_sphere(r=20.0, level=1, seed=0, centre=(0, 0, 0)):
    V, F = icosphere(r, level, centre=centre)
    V = V + np.random.default_rng(seed).normal(0, 0.3, V.shape)  # break symmetry, no ties
    return V, F


def test_gradcheck_vertices_float64():
    V, F = jittered_sphere()
    cam = small_camera()
    v = torch.tensor(V, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: path_lengths(v, F, cam), (v,), eps=1e-6, atol=1e-6, rtol=1e-4, nondet_tol=1e-10)


def test_gradcheck_two_meshes_float64():
    Va, Fa = jittered_sphere(25.0, 1, seed=1)
    Vb, Fb = jittered_sphere(8.0, 1, seed=2, centre=(4.0, 2.0, 0.0))
    cam = small_camera()
    va = torch.tensor(Va, dtype=torch.float64, requires_grad=True)
    vb = torch.tensor(Vb, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: path_lengths([a, b], [Fa, Fb], cam), (va, vb), eps=1e-6,
                                    atol=1e-6, rtol=1e-4, nondet_tol=1e-10)


def test_gradcheck_renderer_vertices_and_mu_scale_float64():
    Va, Fa = jittered_sphere(25.0, 1, seed=3)
    Vb, Fb = jittered_sphere(8.0, 1, seed=4, centre=(3.0, -2.0, 0.0))
    spec = Spectrum(np.array([40.0, 60.0, 80.0]), np.array([1.0, 2.0, 0.5]))
    r = XRayRenderer([Fa, Fb], small_camera(), materials=["soft_tissue", "cortical_bone"], parents=[-1, 0],
                     spectrum=spec)
    va = torch.tensor(Va, dtype=torch.float64, requires_grad=True)
    vb = torch.tensor(Vb, dtype=torch.float64, requires_grad=True)
    mu_scale = torch.tensor([1.0, 1.2], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, s: r([a, b], mu_scale=s), (va, vb, mu_scale), eps=1e-6,
                                    atol=1e-6, rtol=1e-4, nondet_tol=1e-10)


def test_gradcheck_pose_float64():
    from taichi_xray.pose import rigid_transform

    V, F = torus(20.0, 7.0, 16, 8)
    V = V + np.random.default_rng(5).normal(0, 0.2, V.shape)
    v0 = torch.tensor(V, dtype=torch.float64)
    cam = small_camera(24, 20, f=40.0)
    rotvec = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64, requires_grad=True)
    trans = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64, requires_grad=True)

    def render(rv, t):
        return path_lengths(rigid_transform(v0, rv, t).contiguous(), F, cam)

    assert torch.autograd.gradcheck(render, (rotvec, trans), eps=1e-6, atol=1e-5, rtol=1e-4, nondet_tol=1e-10)


def _coverage(V, F, cam):
    """Which faces cover each pixel (count and sorted face ids): the piecewise-constant part."""
    r = tx.rasterize((V, F), cam, dtype=torch.float64, keep_slots=True)
    cnt = r.count.numpy()
    faces = np.sort(np.where(np.arange(r.K)[None, None] < cnt[..., None], r.slot_face.numpy(), -1), axis=-1)
    return cnt, faces


@pytest.mark.parametrize("shape", ["sphere", "box", "torus"])
def test_float32_gradients_match_central_differences(shape):
    """The float32 analytic gradient against the float64 numerical derivative itself, at steps that
    change no coverage (the image is smooth in the vertices between coverage changes, so there the
    central difference is exact to O(h^2), and Richardson extrapolation removes that term)."""
    rng = np.random.default_rng(7)
    V, F = {"sphere": lambda: icosphere(30.0, 3), "box": lambda: box([-25, -20, -15], [20, 25, 30]),
            "torus": lambda: torus(25.0, 9.0, 32, 16)}[shape]()
    R = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    V = V @ (R * np.sign(np.linalg.det(R))).T
    cam = tx.Camera.c_arm(sid=300, sdd=500, width=48, height=40, pixel_spacing=2.0)
    w = torch.tensor(rng.normal(size=(1, 40, 48)), dtype=torch.float32)
    v = torch.tensor(V, dtype=torch.float32, requires_grad=True)
    (path_lengths(v, F, cam) * w).sum().backward()
    g = v.grad.numpy().astype(np.float64)
    base = _coverage(V, F, cam)
    checked = 0
    for k in range(4):
        d = rng.normal(size=V.shape)
        d /= np.linalg.norm(d)
        if k % 2:  # half the directions lean on the gradient, so a wrong scale shows
            d = d + g / np.linalg.norm(g)
            d /= np.linalg.norm(d)
        h = 2e-3
        while h > 1e-7:  # the largest step that changes no pixel's covering faces
            if all(all(np.array_equal(a, b) for a, b in zip(_coverage(V + s * h * d, F, cam), base)) for s in (1, -1)):
                break
            h /= 4
        def central(step):
            f = [(tx.rasterize((V + s * step * d, F), cam, dtype=torch.float64).L.numpy()
                  * w.numpy().astype(np.float64)).sum() for s in (1, -1)]
            return (f[0] - f[1]) / (2 * step)

        num = (4 * central(h / 2) - central(h)) / 3  # Richardson: the O(h^2) term cancels
        ana = float((g * d).sum())
        tol = 2e-4 * abs(num) + 1e-5 * np.linalg.norm(g)
        assert abs(num - ana) <= tol, (num, ana, h)
        if abs(num) > 0.05 * np.linalg.norm(g):  # a direction that says something about the gradient
            assert abs(1.1 * ana - num) > tol  # a gradient 10 % off would fail
            checked += 1
    assert checked >= 2


def test_zero_gradient_outside_silhouette_and_at_flagged_pixels():
    V, F = icosphere(30.0, 3)
    cam = small_camera(48, 40, f=60.0, dist=200.0)
    v = torch.tensor(V, dtype=torch.float32, requires_grad=True)
    L = path_lengths(v, F, cam)
    mask = (L.detach() == 0).float()
    (L * mask).sum().backward()
    assert torch.all(v.grad == 0)
    # open mesh: flagged pixels get exactly zero gradient
    F_open = F[V[F].mean(1)[:, 2] > -29]
    v = torch.tensor(V, dtype=torch.float32, requires_grad=True)
    with pytest.warns(tx.MeshWarning):
        r = tx.rasterize(tx.Mesh(V, F_open), cam)
    flags = r.flags[0].float()
    assert flags.sum() > 0
    L = path_lengths(v, F_open, cam)
    (L * flags).sum().backward()
    assert torch.all(v.grad == 0)
    v.grad = None
    path_lengths(v, F_open, cam).sum().backward()
    assert v.grad.abs().sum() > 0


def test_no_grad_repeated_calls_and_no_recompilation():
    V, F = icosphere(20.0, 2)
    cam = small_camera()
    v = torch.tensor(V, dtype=torch.float32, requires_grad=True)
    with torch.no_grad():
        L0 = path_lengths(v, F, cam)
    assert L0.grad_fn is None
    path_lengths(v, F, cam).sum().backward()  # compile once
    n_fwd = len(kr.raster_forward._primal.compiled_kernels)
    n_bwd = len(kr.raster_backward._primal.compiled_kernels)
    g0 = v.grad.clone()
    for _ in range(3):  # same input: same gradient (up to the order of atomic float additions)
        v.grad = None
        path_lengths(v, F, cam).sum().backward()
        assert torch.allclose(v.grad, g0, rtol=1e-5, atol=1e-5)
    opt = torch.optim.SGD([v], lr=1e-4)
    for _ in range(5):
        opt.zero_grad()
        path_lengths(v, F, cam).sum().backward()
        opt.step()
    assert len(kr.raster_forward._primal.compiled_kernels) == n_fwd
    assert len(kr.raster_backward._primal.compiled_kernels) == n_bwd


def test_bridge_input_checks():
    V, F = icosphere(20.0, 1)
    cam = small_camera()
    v = torch.tensor(V, dtype=torch.float32)
    with pytest.raises(ValueError, match="contiguous"):
        path_lengths(torch.tensor(V.T.copy(), dtype=torch.float32).T, F, cam)
    with pytest.raises(TypeError, match="float32 or float64"):
        path_lengths(v.half(), F, cam)
    with pytest.raises(TypeError, match="share one dtype"):
        path_lengths([v, v.double()], [F, F], cam)
    with pytest.raises(ValueError, match="shape"):
        path_lengths(v[:, :2].contiguous(), F, cam)
    r = XRayRenderer([F], cam, materials=["water"])
    with pytest.raises(ValueError, match="mu_scale"):
        r([v], mu_scale=torch.ones(3))
    with pytest.raises(ValueError, match="material"):
        XRayRenderer([F], cam)


def test_batch_of_poses_and_views():
    V, F = icosphere(20.0, 2)
    cams = [tx.Camera.c_arm(sid=400, sdd=600, width=24, height=20, pixel_spacing=3.0, lao=a) for a in (0, 90)]
    r = XRayRenderer([F], cams, materials=["water"])
    v = torch.tensor(V, dtype=torch.float32)
    out = r([v])
    assert out.shape == (2, 20, 24)
    shifts = torch.tensor([[0.0, 0, 0], [5.0, 0, 0]])
    out2 = r([v[None] + shifts[:, None]])
    assert torch.allclose(out2[0], out[0])
    assert not torch.allclose(out2[1], out[1])


def test_pose_recovery_two_views():
    """Translate/rotate a mesh by a few mm/degrees; gradient descent on image MSE recovers the pose."""
    from taichi_xray.pose import rigid_transform

    Va, Fa = torus(30.0, 10.0, 32, 16)
    Vb, Fb = box([-6, -12, -6], [6, 12, 20])
    V = np.concatenate([Va, Vb + [50, 0, 0]])  # two components that do not intersect
    F = np.concatenate([Fa, Fb + len(Va)])
    cams = [tx.Camera.c_arm(sid=500, sdd=800, width=64, height=64, pixel_spacing=2.0, lao=a, cran=c)
            for a, c in ((0, 0), (90, 10))]
    r = XRayRenderer([F], cams, materials=["cortical_bone"], output="line_integral")
    v0 = torch.tensor(V, dtype=torch.float64)
    centre = v0.mean(0)
    true_rv = torch.tensor(np.deg2rad([3.0, -2.0, 4.0]))
    true_t = torch.tensor([4.0, -3.0, 2.0], dtype=torch.float64)
    target = r([rigid_transform(v0, true_rv, true_t, centre)]).detach()
    rv = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    t = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([{"params": [t], "lr": 0.5}, {"params": [rv], "lr": 0.01}])
    sched = torch.optim.lr_scheduler.StepLR(opt, 80, 0.3)
    for _ in range(300):
        opt.zero_grad()
        loss = ((r([rigid_transform(v0, rv, t, centre)]) - target) ** 2).mean()
        loss.backward()
        opt.step()
        sched.step()
    assert torch.linalg.norm(t.detach() - true_t) < 0.1
    assert np.rad2deg(torch.linalg.norm(rv.detach() - true_rv).item()) < 0.1


def test_deterministic_mode_is_bitwise_reproducible_and_agrees():
    Va, Fa = jittered_sphere(25.0, 2, seed=8)
    Vb, Fb = jittered_sphere(8.0, 2, seed=9, centre=(3.0, -2.0, 0.0))
    spec = Spectrum(np.array([40.0, 60.0, 80.0]), np.array([1.0, 2.0, 0.5]))
    cam = small_camera(40, 32, f=60.0)
    grads = {}
    for det in (True, False):
        r = XRayRenderer([Fa, Fb], cam, materials=["soft_tissue", "cortical_bone"], parents=[-1, 0],
                         spectrum=spec, deterministic=det)
        runs = []
        for _ in range(3):
            va = torch.tensor(Va, dtype=torch.float32, requires_grad=True)
            vb = torch.tensor(Vb, dtype=torch.float32, requires_grad=True)
            s = torch.tensor([1.0, 1.1], requires_grad=True)
            img = r([va, vb], mu_scale=s)
            (img * torch.linspace(-1, 1, img.numel()).reshape(img.shape)).sum().backward()
            runs.append((img.detach(), va.grad, vb.grad, s.grad))
        if det:
            for run in runs[1:]:
                for a, b in zip(run, runs[0]):
                    assert torch.equal(a, b)
        grads[det] = runs[0]
    for a, b in zip(grads[True], grads[False]):  # float32 sums in different orders: 1e-4 of each gradient's scale
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 + 1e-4 * float(b.abs().max()))


def test_gradcheck_deterministic_float64():
    V, F = jittered_sphere(20.0, 1, seed=10)
    cam = small_camera()
    v = torch.tensor(V, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: path_lengths(v, F, cam, deterministic=True), (v,), eps=1e-6,
                                    atol=1e-6, rtol=1e-4, nondet_tol=0.0)
