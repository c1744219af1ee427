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


# ----------------------------------------------------------------------------------------------
# masks, blur and robust NGC (issue 10): against scipy / numpy references written here
# ----------------------------------------------------------------------------------------------
from taichi_xray.fit.losses import (  # noqa: E402
    erode_mask,
    gaussian_blur,
    masked_blur,
    pool_mask,
    robust_ngc,
    robust_ngc_loss,
)


def _shutter_mask(h=40, w=48):
    m = np.ones((h, w))
    m[:, :7] = 0.0
    m[:5, :] = 0.0
    m[30:, 40:] = 0.0
    return m


def test_erode_and_pool_mask_match_scipy():
    m = _shutter_mask()
    m[20, 20] = 0.0  # an isolated hole grows to 3x3
    ref = ndimage.minimum_filter(m, size=3, mode="constant", cval=np.inf)
    np.testing.assert_array_equal(erode_mask(torch.tensor(m)).numpy(), ref)
    np.testing.assert_array_equal(erode_mask(torch.tensor(m), 0).numpy(), m)
    # weighted masks too, batched
    w = RNG.uniform(0.2, 1.0, size=(2, 40, 48)) * m
    ref = np.stack([ndimage.minimum_filter(x, size=5, mode="constant", cval=np.inf) for x in w])
    np.testing.assert_allclose(erode_mask(torch.tensor(w), 2).numpy(), ref)
    for s in (1, 2, 3, 4):
        h, ww = 40 // s, 48 // s
        blocks = w[:, : h * s, : ww * s].reshape(2, h, s, ww, s).min((2, 4))  # min over each s x s block
        ref = np.stack([ndimage.minimum_filter(b, size=3, mode="constant", cval=np.inf) for b in blocks])
        np.testing.assert_allclose(pool_mask(torch.tensor(w), s).numpy(), ref)
    # a boolean mask works and gives floats
    assert pool_mask(torch.tensor(m > 0), 2).dtype.is_floating_point
    with pytest.raises(ValueError, match="factor"):
        pool_mask(torch.tensor(m), 0)


def test_gaussian_blur_matches_scipy():
    a = _smooth_image(seed=3) + RNG.normal(size=(40, 48))
    for sigma in (0.7, 1.0, 2.5):
        np.testing.assert_allclose(gaussian_blur(torch.tensor(a), sigma).numpy(),
                                   ndimage.gaussian_filter(a, sigma, mode="nearest", truncate=4.0), atol=1e-12)
    np.testing.assert_array_equal(gaussian_blur(torch.tensor(a), 0.0).numpy(), a)


def test_masked_blur_is_normalised_convolution():
    a = _smooth_image(seed=4)
    w = _shutter_mask()
    out = masked_blur(torch.tensor(a)[None], torch.tensor(w)[None], 1.5)[0].numpy()
    num = ndimage.gaussian_filter(w * a, 1.5, mode="constant", truncate=4.0)
    den = ndimage.gaussian_filter(w, 1.5, mode="constant", truncate=4.0)
    ok = den > 1e-6
    np.testing.assert_allclose(out[ok], (num / np.where(ok, den, 1))[ok], atol=1e-12)
    # values outside the mask never enter
    b = a.copy()
    b[w == 0] = 1e6
    out_b = masked_blur(torch.tensor(b)[None], torch.tensor(w)[None], 1.5)[0].numpy()
    np.testing.assert_allclose(out_b[w > 0], out[w > 0], atol=1e-9)


def _robust_ngc_ref(a, b, w, sigma, outlier):
    """numpy/scipy: normalised-convolution blur, Sobel, outlier weights, weighted NGC."""
    sup = (w > 0).astype(float)
    if sigma > 0:
        def blur(x):
            num = ndimage.gaussian_filter(sup * x, sigma, mode="constant")
            den = ndimage.gaussian_filter(sup, sigma, mode="constant")
            return np.where(den > 1e-6, num / np.where(den > 1e-6, den, 1), x)
        a, b = blur(a), blur(b)
    crop = (slice(1, -1), slice(1, -1))
    ax, ay = ndimage.sobel(a, axis=1)[crop], ndimage.sobel(a, axis=0)[crop]
    bx, by = ndimage.sobel(b, axis=1)[crop], ndimage.sobel(b, axis=0)[crop]
    wi = w[crop].copy()
    if outlier is not None:
        gm, gt = np.hypot(ax, ay), np.hypot(bx, by)
        ins = wi > 0
        thr = outlier * gm[ins].max() / gm[ins].mean() * gt[ins].mean()
        rd = 1 + int(np.ceil(2 * sigma))
        bad = ndimage.maximum_filter((gt > thr) & ins, size=2 * rd + 1, mode="constant", cval=0)
        wi = np.where(bad, 0.0, wi)
    return 0.5 * (_ncc_ref(ax, bx, wi) + _ncc_ref(ay, by, wi))


def test_robust_ngc_matches_reference():
    a = _smooth_image(seed=5)
    b = 0.7 * a + 0.3 * _smooth_image(seed=6)
    w = pool_mask(torch.tensor(_shutter_mask()), 1).numpy()
    ta, tb, tw = torch.tensor(a), torch.tensor(b), torch.tensor(w)
    # sigma 0 and no outlier test: plain masked NGC
    np.testing.assert_allclose(float(robust_ngc(ta, tb, tw, sigma=0, outlier=None)), float(ngc(ta, tb, tw)),
                               rtol=1e-12)
    for sigma, outlier in ((1.0, None), (0.0, 1.5), (1.0, 1.5), (2.0, 1.2)):
        np.testing.assert_allclose(float(robust_ngc(ta, tb, tw, sigma=sigma, outlier=outlier)),
                                   _robust_ngc_ref(a, b, w, sigma, outlier), rtol=1e-10)
    np.testing.assert_allclose(float(robust_ngc_loss(ta, tb, tw)), 1 - _robust_ngc_ref(a, b, w, 0.0, 1.5),
                               rtol=1e-10)  # defaults: no blur, outlier test at 1.5


def test_robust_ngc_rejects_a_wire_and_ignores_the_target_scale():
    r = np.random.default_rng(11)
    model = ndimage.gaussian_filter(r.normal(size=(64, 64)), 3.0)
    target = model + 0.02 * r.normal(size=(64, 64))
    wire = np.zeros((64, 64))
    wire[:, 30:32] = 40.0 * model.std()  # a thin column far denser than anything in the model
    tm, tt, tw = torch.tensor(model), torch.tensor(target), torch.tensor(target + wire)
    clean = float(robust_ngc(tm, tt, sigma=1.0))
    with_wire = float(robust_ngc(tm, tw, sigma=1.0))
    assert abs(with_wire - clean) < 0.05, (clean, with_wire)
    assert float(ngc(tm, tw)) < clean - 0.3  # plain NGC is dominated by the wire
    _, weights = robust_ngc(tm, tw, sigma=1.0, return_weights=True)
    cols = np.flatnonzero(weights.numpy().min(0) == 0) + 1  # image columns of rejected gradient pixels
    assert cols.min() >= 24 and cols.max() <= 37 and weights[:, 30 - 1].sum() == 0  # the wire and its flanks
    # a log image of unknown scale and offset: same value
    np.testing.assert_allclose(float(robust_ngc(tm, 1234.5 * tw + 17.0, sigma=1.0)), with_wire, rtol=1e-9)
    # without the blur the wire is rejected too
    assert abs(float(robust_ngc(tm, tw)) - float(robust_ngc(tm, tt))) < 0.05


def test_robust_ngc_gradient_and_bad_input():
    a = torch.tensor(_smooth_image(14, 16, seed=7), requires_grad=True)
    b = torch.tensor(_smooth_image(14, 16, seed=8))
    m = np.ones((14, 16))
    m[:, :3] = 0
    w = pool_mask(torch.tensor(m), 1)
    assert torch.autograd.gradcheck(lambda x: robust_ngc(x, b, w, sigma=1.0, outlier=2.0), (a,))
    a = torch.tensor(_smooth_image(seed=7))
    b = torch.tensor(_smooth_image(seed=8))
    with pytest.raises(ValueError, match="sigma"):
        robust_ngc(a, b, sigma=-1.0)
    with pytest.raises(ValueError, match="outlier"):
        robust_ngc(a, b, outlier=0.0)
    with pytest.raises(ValueError, match="mask has no positive weight"):
        robust_ngc(a, b, torch.zeros(40, 48))
