"""The Taichi-native differentiable path: a forward written in Taichi, differentiated by ti.ad.Tape.

The rasterizer's z-buffer gradient is registered with ti.ad.grad_replaced / grad_for and Beer-Lambert is
differentiated by Taichi's autodiff; the torch bridge wraps the same kernels. The torch route is the
reference here (and is itself checked against float64 gradcheck and numerical derivatives elsewhere).
"""
import numpy as np
import pytest
import taichi as ti
import torch

import taichi_xray as tx
from taichi_xray.fit.losses import ngc_loss
from taichi_xray.fit.taichi_fit import Adam, TaichiPoseLoss
from taichi_xray.pipeline import Pipeline
from taichi_xray.physics import Spectrum
from taichi_xray.pose import rigid_transform
from taichi_xray.primitives import box, ellipsoid, icosphere


@ti.kernel
def weighted_sum(img: ti.types.ndarray(), w: ti.types.ndarray(), loss: ti.types.ndarray()):
    for i, r, c in ti.ndrange(w.shape[0], w.shape[1], w.shape[2]):
        loss[0] += img[0, i, r, c] * w[i, r, c]


def phantom():
    body = tx.Mesh(*ellipsoid((70.0, 50.0, 90.0), n_lat=12, n_lon=24), "body")
    bone = tx.Mesh(*box((20.0, 24.0, 120.0), centre=(0.0, 18.0, 0.0)), "bone")
    lung = tx.Mesh(*icosphere(25.0, 2, centre=(-32.0, -8.0, 20.0)), "lung")
    return [body, bone, lung], ["soft_tissue", "cortical_bone", "lung"], [-1, 0, 0]


def cameras(n=64):
    return [tx.Camera.c_arm(sid=500.0, sdd=800.0, width=n, height=n, pixel_spacing=320.0 / n, lao=a, cran=c)
            for a, c in ((15.0, 5.0), (75.0, -10.0))]


SPEC = Spectrum(np.array([40.0, 55.0, 70.0, 90.0]), np.array([1.0, 2.0, 1.5, 0.5]))


def test_tape_gradient_equals_the_torch_bridge():
    meshes, mats, parents = phantom()
    pipe = Pipeline(meshes, cameras(), materials=mats, parents=parents, spectrum=SPEC, air=True)
    V0 = pipe.pack_vertices()
    rng = np.random.default_rng(3)
    w = torch.tensor(rng.normal(size=(2, 64, 64)))
    # Taichi: the forward (rasterize + Beer-Lambert) and the loss inside one tape
    V = V0.clone().requires_grad_(True)
    out = torch.zeros((1, 2, 64, 64), dtype=torch.float32, requires_grad=True)
    loss = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    for t in (V, out, loss):
        t.grad = torch.zeros_like(t)
    with ti.ad.Tape(loss=loss):
        pipe.taichi_forward(V, out)
        weighted_sum(out, w, loss)
    g_taichi = V.grad.clone()
    # torch autograd over the same pipeline
    pipe2 = Pipeline(meshes, cameras(), materials=mats, parents=parents, spectrum=SPEC, air=True, output="intensity")
    parts = [torch.tensor(m.vertices, dtype=torch.float32, requires_grad=True) for m in meshes]
    img = pipe2.render_torch(parts)
    (img.double() * w).sum().backward()
    g_torch = torch.cat([p.grad for p in parts])[None]
    assert float(loss.detach()) == pytest.approx(float((img.detach().double() * w).sum()), rel=1e-5)
    scale = float(g_torch.abs().max())
    assert scale > 0
    np.testing.assert_allclose(g_taichi.numpy(), g_torch.numpy(), atol=1e-4 * scale, rtol=1e-4)


def test_taichi_pose_loss_equals_torch_ngc_and_recovers_a_pose():
    meshes, mats, parents = phantom()
    cams = cameras(48)
    pipe = Pipeline(meshes, cams, materials=mats, parents=parents, spectrum=SPEC, air=True,
                    physics_dtype=torch.float64)
    V0 = np.concatenate([m.vertices for m in meshes])
    centre = V0.mean(0)
    true = np.array([3.0, -2.0, 4.0, 5.0, -4.0, 3.0])  # deg, mm

    def torch_render(p):
        pt = torch.as_tensor(p, dtype=torch.float64)
        v = rigid_transform(torch.as_tensor(V0), torch.deg2rad(pt[:3]), pt[3:], torch.as_tensor(centre))
        parts = list(torch.split(v.to(torch.float32), [len(m.vertices) for m in meshes]))
        ref = Pipeline(meshes, cams, materials=mats, parents=parents, spectrum=SPEC, air=True,
                       physics_dtype=torch.float64)
        return ref.render_torch(parts)

    target = torch_render(true).detach().numpy()
    fn = TaichiPoseLoss(pipe, target, centre=centre)
    p0 = np.array([1.0, 1.5, -1.0, 2.0, 1.0, -2.0])
    loss, grad = fn(p0)
    # the torch route at the same pose
    x = torch.tensor(p0, dtype=torch.float64, requires_grad=True)
    pt = x
    v = rigid_transform(torch.as_tensor(V0), torch.deg2rad(pt[:3]), pt[3:], torch.as_tensor(centre))
    parts = list(torch.split(v.to(torch.float32), [len(m.vertices) for m in meshes]))
    ref = Pipeline(meshes, cams, materials=mats, parents=parents, spectrum=SPEC, air=True, physics_dtype=torch.float64)
    L = ngc_loss(ref.render_torch(parts), torch.as_tensor(target)).mean()
    L.backward()
    assert loss == pytest.approx(float(L.detach()), rel=1e-6, abs=1e-7)
    np.testing.assert_allclose(grad, x.grad.numpy(), rtol=2e-3, atol=2e-3 * np.abs(x.grad.numpy()).max())
    # the same evaluation twice: gradient buffers start from zero each time (a stale buffer would add
    # the first gradient again: 100 % off); float32 atomic sums may add in another order (~1e-8)
    loss2, grad2 = fn(p0)
    assert loss2 == pytest.approx(loss, rel=1e-6)
    np.testing.assert_allclose(grad2, grad, rtol=1e-4, atol=1e-6 * np.abs(grad).max())
    # gradient descent with Taichi's gradients alone comes back to the true pose
    opt = Adam(p0, lr=0.4)
    for it in range(60):
        _, g = fn(opt.x)
        opt.step(g)
    assert np.abs(opt.x[:3] - true[:3]).max() < 0.5 and np.abs(opt.x[3:] - true[3:]).max() < 0.5, opt.x
