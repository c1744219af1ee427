"""Tests for taichi_xray.fit.losses against a plain numpy/scipy implementation of Penney's NGC."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from taichi_xray.fit.losses import (
    mse,
    multiscale_ngc,
    multiscale_ngc_loss,
    ncc,
    ncc_loss,
    ngc,
    ngc_loss,
    patch_ngc,
    patch_ngc_loss,
    sobel,
)

RNG = np.random.default_rng(7)


def _smooth_image(h=40, w=48, seed=0):
    r = np.random.default_rng(seed)
    return ndimage.gaussian_filter(r.normal(size=(h, w)), 2.0) + 0.05 * r.normal(size=(h, w))


def _ncc_ref(a, b, w=None):
    w = np.ones_like(a) if w is None else w
    ma, mb = (w * a).sum() / w.sum(), (w * b).sum() / w.sum()
    return (w * (a - ma) * (b - mb)).sum() / np.sqrt((w * (a - ma) ** 2).sum() * (w * (b - mb) ** 2).sum())


def _ngc_ref(a, b, w=None):
    """Penney et al. 1998: mean of the NCCs of the x and y Sobel gradients (interior pixels)."""
    crop = (slice(1, -1), slice(1, -1))
    ax, ay = ndimage.sobel(a, axis=1)[crop], ndimage.sobel(a, axis=0)[crop]
    bx, by = ndimage.sobel(b, axis=1)[crop], ndimage.sobel(b, axis=0)[crop]
    wi = None if w is None else w[crop]
    return 0.5 * (_ncc_ref(ax, bx, wi) + _ncc_ref(ay, by, wi))


def test_sobel_matches_scipy():
    a = _smooth_image()
    gx, gy = sobel(torch.tensor(a)[None])
    np.testing.assert_allclose(gx[0].numpy(), ndimage.sobel(a, axis=1)[1:-1, 1:-1], atol=1e-12)
    np.testing.assert_allclose(gy[0].numpy(), ndimage.sobel(a, axis=0)[1:-1, 1:-1], atol=1e-12)


def test_ngc_matches_numpy_reference():
    a, b = _smooth_image(seed=1), _smooth_image(seed=2)
    b = 0.6 * a + 0.4 * b  # partially correlated
    val = ngc(torch.tensor(a), torch.tensor(b))
    assert val.shape == ()
    np.testing.assert_allclose(float(val), _ngc_ref(a, b), rtol=1e-12)
    assert 0.2 < float(val) < 0.99
    np.testing.assert_allclose(float(ncc(torch.tensor(a), torch.tensor(b))), _ncc_ref(a, b), rtol=1e-12)
    # float32 agrees to single precision
    np.testing.assert_allclose(float(ngc(torch.tensor(a, dtype=torch.float32),
                                         torch.tensor(b, dtype=torch.float32))), _ngc_ref(a, b), atol=1e-5)


def test_ngc_batched_and_mask_matches_reference():
    a = np.stack([_smooth_image(seed=s) for s in range(3)])
    b = np.stack([_smooth_image(seed=s + 10) for s in range(3)]) + 0.5 * a
    w = (RNG.uniform(size=a.shape[1:]) > 0.3) * RNG.uniform(0.5, 2.0, size=a.shape[1:])
    val = ngc(torch.tensor(a), torch.tensor(b), mask=torch.tensor(w))
    assert val.shape == (3,)
    ref = [_ngc_ref(a[i], b[i], w) for i in range(3)]
    np.testing.assert_allclose(val.numpy(), ref, rtol=1e-12)
    # single image against batch broadcasts
    val2 = ngc(torch.tensor(a[0]), torch.tensor(b))
    np.testing.assert_allclose(val2.numpy(), [_ngc_ref(a[0], b[i]) for i in range(3)], rtol=1e-12)


def test_mask_excludes_region():
    a = _smooth_image(seed=3)
    b = a.copy()
    b[:, 24:] = _smooth_image(seed=4)[:, 24:]  # right half unrelated
    mask = np.zeros_like(a)
    mask[:, :22] = 1.0  # interior of the left half only (Sobel stencil stays left of col 23)
    ta, tb = torch.tensor(a), torch.tensor(b)
    assert float(ngc(ta, tb)) < 0.9
    np.testing.assert_allclose(float(ngc(ta, tb, mask=torch.tensor(mask))), 1.0, atol=1e-12)
    np.testing.assert_allclose(float(ngc(ta, tb, mask=torch.tensor(mask) > 0)), 1.0, atol=1e-12)
    np.testing.assert_allclose(float(ncc(ta, tb, mask=torch.tensor(mask))), 1.0, atol=1e-12)
    assert float(mse(ta, tb, mask=torch.tensor(mask))) == 0.0
    with pytest.raises(ValueError, match="mask"):
        ngc(ta, tb, mask=torch.zeros_like(ta))
    with pytest.raises(ValueError, match="mask"):
        ngc(ta, tb, mask=torch.ones(5, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="non-negative"):
        ngc(ta, tb, mask=-torch.ones_like(ta))


def test_identity_and_affine_invariance():
    a = torch.tensor(_smooth_image(seed=5))
    for f in (ngc, ncc, lambda x, y: multiscale_ngc(x, y, 3), lambda x, y: patch_ngc(x, y, 12)):
        np.testing.assert_allclose(float(f(a, a)), 1.0, atol=1e-12)
        np.testing.assert_allclose(float(f(a, 3.7 * a + 12.0)), 1.0, atol=1e-12)
        np.testing.assert_allclose(float(f(a, 0.01 * a - 5.0)), 1.0, atol=1e-10)
        np.testing.assert_allclose(float(f(a, -2.0 * a + 1.0)), -1.0, atol=1e-12)
    np.testing.assert_allclose(float(ngc_loss(a, a)), 0.0, atol=1e-12)
    np.testing.assert_allclose(float(ngc_loss(a, -a)), 2.0, atol=1e-12)
    np.testing.assert_allclose(float(ncc_loss(a, 2 * a)), 0.0, atol=1e-12)


def test_constant_images_are_finite():
    a = torch.tensor(_smooth_image(seed=6), requires_grad=True)
    c = torch.full_like(a, 3.0)
    for f in (ngc, ncc, lambda x, y: patch_ngc(x, y, 8)):
        v = f(a, c)
        assert float(v.detach()) == 0.0
        (g,) = torch.autograd.grad(v, a)
        assert torch.isfinite(g).all()
    assert float(ngc(c, c)) == 0.0


def test_gradcheck_float64():
    a = torch.tensor(_smooth_image(12, 14, seed=8), requires_grad=True)
    b = torch.tensor(_smooth_image(12, 14, seed=9))
    w = torch.tensor(RNG.uniform(0.0, 1.0, size=(12, 14)))
    assert torch.autograd.gradcheck(lambda x: ngc(x, b), (a,))
    assert torch.autograd.gradcheck(lambda x: ngc(x, b, mask=w), (a,))
    assert torch.autograd.gradcheck(lambda x: ncc(x, b, mask=w), (a,))
    assert torch.autograd.gradcheck(lambda x: multiscale_ngc(x, b, 2), (a,))
    assert torch.autograd.gradcheck(lambda x: patch_ngc(x, b, 5, stride=3, mask=w), (a,))
    assert torch.autograd.gradcheck(lambda x: mse(x, b, mask=w), (a,))


def test_multiscale_matches_reference():
    a, b = _smooth_image(32, 40, seed=11), _smooth_image(32, 40, seed=12)
    b = a + b

    def pool(x):
        h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
        return x[:h, :w].reshape(h // 2, 2, w // 2, 2).mean((1, 3))

    ref, x, y = 0.0, a, b
    for _ in range(3):
        ref += _ngc_ref(x, y) / 3
        x, y = pool(x), pool(y)
    np.testing.assert_allclose(float(multiscale_ngc(torch.tensor(a), torch.tensor(b), 3)), ref, rtol=1e-12)
    np.testing.assert_allclose(float(multiscale_ngc(torch.tensor(a), torch.tensor(b), 1)),
                               _ngc_ref(a, b), rtol=1e-12)
    with pytest.raises(ValueError, match="too small"):
        multiscale_ngc(torch.tensor(a), torch.tensor(b), 5)
    assert float(multiscale_ngc_loss(torch.tensor(a), torch.tensor(a))) == pytest.approx(0.0, abs=1e-12)


def test_patch_ngc_matches_reference():
    a, b = _smooth_image(26, 34, seed=13), _smooth_image(26, 34, seed=14)
    b = a + b
    crop = (slice(1, -1), slice(1, -1))
    gx = [ndimage.sobel(im, axis=1)[crop] for im in (a, b)]
    gy = [ndimage.sobel(im, axis=0)[crop] for im in (a, b)]
    vals = []
    for r in range(0, 24 - 8 + 1, 8):
        for c in range(0, 32 - 8 + 1, 8):
            s = (slice(r, r + 8), slice(c, c + 8))
            vals.append(0.5 * (_ncc_ref(gx[0][s], gx[1][s]) + _ncc_ref(gy[0][s], gy[1][s])))
    np.testing.assert_allclose(float(patch_ngc(torch.tensor(a), torch.tensor(b), 8)), np.mean(vals), rtol=1e-12)
    # a mask covering only the first patch gives that patch's NGC
    m = np.zeros_like(a)
    m[1:9, 1:9] = 1
    np.testing.assert_allclose(float(patch_ngc(torch.tensor(a), torch.tensor(b), 8, mask=torch.tensor(m))),
                               vals[0], rtol=1e-12)
    assert float(patch_ngc_loss(torch.tensor(a), torch.tensor(a), 8)) == pytest.approx(0.0, abs=1e-12)


def test_mse_and_reductions():
    a = torch.tensor(RNG.normal(size=(2, 6, 7)))
    b = torch.tensor(RNG.normal(size=(2, 6, 7)))
    per = ((a - b) ** 2).mean((-2, -1))
    torch.testing.assert_close(mse(a, b, reduction="none"), per)
    torch.testing.assert_close(mse(a, b), per.mean())
    torch.testing.assert_close(mse(a, b, reduction="sum"), per.sum())
    assert ngc_loss(a, b, reduction="none").shape == (2,)
    with pytest.raises(ValueError, match="reduction"):
        mse(a, b, reduction="max")


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        ngc(torch.zeros(5), torch.zeros(5))
    with pytest.raises(TypeError):
        ngc(np.zeros((5, 5)), torch.zeros(5, 5))
    with pytest.raises(ValueError, match="incompatible"):
        ngc(torch.zeros(5, 5), torch.zeros(6, 5))
    with pytest.raises(ValueError, match="H, W >= 3"):
        ngc(torch.zeros(2, 5), torch.zeros(2, 5))
