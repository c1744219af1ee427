"""Image similarity measures and losses for 2D/3D registration (torch, differentiable).

All functions take images of shape (H, W) or batches (B, H, W) (float32 or
float64, any device; both images broadcast to a common shape) and an optional
``mask`` of non-negative weights, shape (H, W) or (B, H, W) (a boolean mask
works too).  Similarities return a 0-d tensor for (H, W) input and a (B,)
tensor for batches.  The ``*_loss`` functions return ``1 - similarity``
(or the MSE) reduced by ``reduction`` ("mean" default, "sum" or "none").

Sign and range
--------------
* :func:`ncc`, :func:`ngc`, :func:`multiscale_ngc`, :func:`patch_ngc`:
  similarity in [-1, 1]; 1 = perfectly (positively) correlated, invariant to
  ``a*I + b`` with a > 0 (and -1 for a < 0).
* :func:`ncc_loss`, :func:`ngc_loss`, ...: ``1 - similarity`` in [0, 2];
  0 is best.
* :func:`mse`: mean (weighted) squared difference, >= 0, in intensity^2.

Zero variance
-------------
A correlation coefficient is undefined when one image (or gradient image)
is constant.  Here ``corr = cov / sqrt(max(var_a * var_b, eps^2))``: for
non-degenerate images this is the exact coefficient; when either variance
is (numerically) zero, the covariance is zero too, so the result is 0
("no information") with a finite gradient instead of NaN.  ``eps`` has the
units of intensity^2 (std_a * std_b) and defaults to 1e-10; raise it for
images whose values are tiny.

NGC (Penney et al. 1998, IEEE TMI 17(4):586-595)
------------------------------------------------
``NGC = (NCC(dI1/dx, dI2/dx) + NCC(dI1/dy, dI2/dy)) / 2`` with 3x3 Sobel
gradients (identical to ``scipy.ndimage.sobel``).  The gradients are computed
only where the 3x3 stencil fits inside the image ("valid" region, the
(H-2, W-2) interior), so no padding artefacts enter; the mask is cropped to
the same interior.

Masks of usable pixels (collimator fields)
------------------------------------------
The weight of a gradient pixel is the mask at the stencil's *centre*, so a
mask of usable pixels must be eroded by one pixel before it weights Sobel
gradients, or a stencil at the field's edge reads the shutter beyond it.
:func:`pool_mask` does that (and the min-pooling for coarse levels);
:func:`taichi_xray.fit.register` applies it at every level.

Robust NGC (:func:`robust_ngc`)
-------------------------------
For targets that are real (or made to look real) X-rays: NGC of the two
images after (1) an optional Gaussian pre-blur computed by normalised
convolution inside the mask (``G*(w I) / G*(w)``: pixels outside the field
never enter; off by default), (2) rejection of the target pixels whose
gradient magnitude, relative to the mean over the mask, exceeds ``outlier``
times the largest relative magnitude of the model image (a wire, a screw or a
shutter edge the model cannot explain). Measured (docs/registration.md): the
pre-blur made registrations worse (much worse against a CT DRR), the outlier
test was neutral on the phantom and helped plain NGC against a CT DRR; the
scene-level default is :func:`patch_ngc`.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "sobel",
    "ncc",
    "ngc",
    "multiscale_ngc",
    "patch_ngc",
    "mse",
    "ncc_loss",
    "ngc_loss",
    "multiscale_ngc_loss",
    "patch_ngc_loss",
    "pool_mask",
    "erode_mask",
    "gaussian_blur",
    "masked_blur",
    "robust_ngc",
    "robust_ngc_loss",
]

DEFAULT_EPS = 1e-10


def _prepare(a: torch.Tensor, b: torch.Tensor, mask: Optional[torch.Tensor]):
    """Broadcast to (B, H, W); returns a, b, w (or None) and whether input was 2-D."""
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"image {name} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim not in (2, 3):
            raise ValueError(f"image {name} must have shape (H, W) or (B, H, W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"image {name} must be floating point, got {x.dtype}")
    single = a.ndim == 2 and b.ndim == 2
    try:
        a3, b3 = torch.broadcast_tensors(a[None] if a.ndim == 2 else a, b[None] if b.ndim == 2 else b)
    except RuntimeError as e:
        raise ValueError(f"images have incompatible shapes {tuple(a.shape)} and {tuple(b.shape)}") from e
    dtype = torch.promote_types(a.dtype, b.dtype)
    a3, b3 = a3.to(dtype), b3.to(dtype)
    w = None
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            mask = torch.as_tensor(mask)
        if mask.ndim not in (2, 3) or mask.shape[-2:] != a3.shape[-2:]:
            raise ValueError(f"mask must have shape (H, W) or (B, H, W) = {tuple(a3.shape[-2:])}, "
                             f"got {tuple(mask.shape)}")
        w = mask.to(dtype=dtype, device=a3.device)
        w = (w[None] if w.ndim == 2 else w).expand_as(a3)
        if bool((w < 0).any()):
            raise ValueError("mask weights must be non-negative")
        if single and w.shape[0] != 1:
            single = False
    return a3, b3, w, single


def _out(x: torch.Tensor, single: bool) -> torch.Tensor:
    return x[0] if single else x


def _corr(a: torch.Tensor, b: torch.Tensor, w: Optional[torch.Tensor], eps: float, dims) -> torch.Tensor:
    """Weighted Pearson correlation over ``dims``."""
    if w is None:
        ma, mb = a.mean(dims, keepdim=True), b.mean(dims, keepdim=True)
        da, db = a - ma, b - mb
        cov = (da * db).mean(dims)
        va, vb = (da * da).mean(dims), (db * db).mean(dims)
    else:
        wk = w.sum(dims, keepdim=True)
        ws = w.sum(dims)
        ma, mb = (w * a).sum(dims, keepdim=True) / wk, (w * b).sum(dims, keepdim=True) / wk
        da, db = a - ma, b - mb
        cov = (w * da * db).sum(dims) / ws
        va, vb = (w * da * da).sum(dims) / ws, (w * db * db).sum(dims) / ws
    return cov / torch.sqrt(torch.clamp(va * vb, min=eps * eps))


def _check_weights(w: torch.Tensor, what: str) -> None:
    if bool((w.flatten(1).sum(1) <= 0).any()):
        raise ValueError(f"mask has no positive weight in {what} for at least one image")


def sobel(img: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """3x3 Sobel gradients on the valid interior.

    img: (B, H, W) -> (gx, gy), each (B, H-2, W-2).  gx is the derivative along
    columns (x = u), gy along rows (y = v); equal to
    ``scipy.ndimage.sobel(img, axis=-1)[..., 1:-1, 1:-1]`` (resp. axis=-2)."""
    if img.ndim != 3 or img.shape[-1] < 3 or img.shape[-2] < 3:
        raise ValueError(f"sobel needs (B, H, W) images with H, W >= 3, got {tuple(img.shape)}")
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=img.dtype, device=img.device)
    kern = torch.stack((k, k.t()))[:, None]  # (2, 1, 3, 3): x then y
    g = F.conv2d(img[:, None], kern)  # cross-correlation == scipy's correlate
    return g[:, 0], g[:, 1]


def ncc(a: torch.Tensor, b: torch.Tensor, mask: Optional[torch.Tensor] = None,
        eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Normalized cross-correlation (Pearson) of two images, in [-1, 1].

    a, b: (H, W) or (B, H, W).  mask: optional (H, W) or (B, H, W) weights >= 0.
    Returns () or (B,).  Constant images give 0 (see module docstring)."""
    a3, b3, w, single = _prepare(a, b, mask)
    if w is not None:
        _check_weights(w, "the image")
    return _out(_corr(a3, b3, w, eps, (-2, -1)), single)


def ngc(a: torch.Tensor, b: torch.Tensor, mask: Optional[torch.Tensor] = None,
        eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Normalized gradient correlation (Penney et al. 1998), in [-1, 1].

    Mean of the NCCs of the Sobel x-gradients and of the Sobel y-gradients,
    computed on the (H-2, W-2) interior (mask cropped likewise).
    a, b: (H, W) or (B, H, W), H, W >= 3.  mask: (H, W) or (B, H, W) weights.
    Returns () or (B,)."""
    a3, b3, w, single = _prepare(a, b, mask)
    return _out(_ngc3(a3, b3, w, eps), single)


def _ngc3(a3, b3, w, eps):
    ax, ay = sobel(a3)
    bx, by = sobel(b3)
    wi = None if w is None else w[:, 1:-1, 1:-1]
    if wi is not None:
        _check_weights(wi, "the image interior (border pixels are dropped by the Sobel stencil)")
    return 0.5 * (_corr(ax, bx, wi, eps, (-2, -1)) + _corr(ay, by, wi, eps, (-2, -1)))


def multiscale_ngc(a: torch.Tensor, b: torch.Tensor, levels: int = 3,
                   mask: Optional[torch.Tensor] = None, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """NGC averaged over an image pyramid, in [-1, 1].

    Level 0 is the input; level l+1 is the 2x2 average pooling of level l
    (odd trailing rows/columns dropped); the mask is average-pooled the same
    way.  ``levels`` >= 1 levels are used; the coarsest must be >= 3x3.
    Returns () or (B,)."""
    if not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels must be a positive int, got {levels!r}")
    a3, b3, w, single = _prepare(a, b, mask)
    H, W = a3.shape[-2:]
    if min(H, W) // 2 ** (levels - 1) < 3:
        raise ValueError(f"image {H}x{W} is too small for {levels} pyramid levels (coarsest must be >= 3x3)")
    total = 0.0
    for lev in range(levels):
        if lev:
            a3 = F.avg_pool2d(a3[:, None], 2)[:, 0]
            b3 = F.avg_pool2d(b3[:, None], 2)[:, 0]
            if w is not None:
                w = F.avg_pool2d(w[:, None], 2)[:, 0]
        total = total + _ngc3(a3, b3, w, eps)
    return _out(total / levels, single)


def patch_ngc(a: torch.Tensor, b: torch.Tensor, patch_size=32, stride=None,
              mask: Optional[torch.Tensor] = None, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Patch-wise NGC: mean over patches of the per-patch NGC, in [-1, 1].

    Sobel gradients are computed once on the (H-2, W-2) interior; that
    gradient image is cut into ``patch_size`` patches (int or (ph, pw)) every
    ``stride`` pixels (default = patch_size, i.e. non-overlapping; patches that
    do not fit are dropped).  With a mask, each patch uses the weighted NCC and
    patches with zero total weight are left out of the mean.  Flat patches
    (zero gradient variance) contribute 0.  Returns () or (B,)."""
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    sh, sw = (ph, pw) if stride is None else ((stride, stride) if isinstance(stride, int) else tuple(stride))
    if min(ph, pw, sh, sw) < 1:
        raise ValueError(f"patch_size and stride must be positive, got {patch_size!r}, {stride!r}")
    a3, b3, w, single = _prepare(a, b, mask)
    H, W = a3.shape[-2] - 2, a3.shape[-1] - 2
    if ph > H or pw > W:
        raise ValueError(f"patch_size {(ph, pw)} larger than the gradient image {(H, W)} "
                         f"(image minus the 1-pixel Sobel border)")
    ax, ay = sobel(a3)
    bx, by = sobel(b3)

    def patches(x):  # (B, h, w) -> (B, P, ph*pw)
        return F.unfold(x[:, None], (ph, pw), stride=(sh, sw)).transpose(1, 2)

    if w is None:
        c = 0.5 * (_corr(patches(ax), patches(bx), None, eps, -1) + _corr(patches(ay), patches(by), None, eps, -1))
        return _out(c.mean(-1), single)
    wp = patches(w[:, 1:-1, 1:-1])
    valid = wp.sum(-1) > 0  # (B, P)
    if bool((~valid).all(-1).any()):
        raise ValueError("mask has no positive weight in any patch for at least one image")
    wp_safe = torch.where(valid[..., None], wp, torch.ones_like(wp))
    c = 0.5 * (_corr(patches(ax), patches(bx), wp_safe, eps, -1)
               + _corr(patches(ay), patches(by), wp_safe, eps, -1))
    c = torch.where(valid, c, torch.zeros_like(c))
    return _out(c.sum(-1) / valid.sum(-1).to(c.dtype), single)


def mse(a: torch.Tensor, b: torch.Tensor, mask: Optional[torch.Tensor] = None,
        reduction: str = "mean") -> torch.Tensor:
    """(Weighted) mean squared difference per image, >= 0, intensity^2.

    Returns () / (B,) for reduction="none", else the mean/sum over the batch."""
    a3, b3, w, single = _prepare(a, b, mask)
    d2 = (a3 - b3) ** 2
    if w is None:
        per = d2.mean((-2, -1))
    else:
        _check_weights(w, "the image")
        per = (w * d2).sum((-2, -1)) / w.sum((-2, -1))
    return _reduce(_out(per, single), reduction)


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    if reduction == "none":
        return x
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def ncc_loss(a, b, mask=None, eps: float = DEFAULT_EPS, reduction: str = "mean") -> torch.Tensor:
    """``1 - ncc``, in [0, 2], 0 best."""
    return _reduce(1.0 - ncc(a, b, mask, eps), reduction)


def ngc_loss(a, b, mask=None, eps: float = DEFAULT_EPS, reduction: str = "mean") -> torch.Tensor:
    """``1 - ngc``, in [0, 2], 0 best."""
    return _reduce(1.0 - ngc(a, b, mask, eps), reduction)


def multiscale_ngc_loss(a, b, levels: int = 3, mask=None, eps: float = DEFAULT_EPS,
                        reduction: str = "mean") -> torch.Tensor:
    """``1 - multiscale_ngc``, in [0, 2], 0 best."""
    return _reduce(1.0 - multiscale_ngc(a, b, levels, mask, eps), reduction)


def patch_ngc_loss(a, b, patch_size=32, stride=None, mask=None, eps: float = DEFAULT_EPS,
                   reduction: str = "mean") -> torch.Tensor:
    """``1 - patch_ngc``, in [0, 2], 0 best."""
    return _reduce(1.0 - patch_ngc(a, b, patch_size, stride, mask, eps), reduction)


# ----------------------------------------------------------------------------------------------
# masks, blur and robust NGC (real X-ray targets)
# ----------------------------------------------------------------------------------------------
def _as3(x: torch.Tensor, name: str) -> Tuple[torch.Tensor, bool]:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.ndim not in (2, 3):
        raise ValueError(f"{name} must have shape (H, W) or (B, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.to(torch.float64)
    return (x[None] if x.ndim == 2 else x), x.ndim == 2


def erode_mask(mask: torch.Tensor, pixels: int = 1) -> torch.Tensor:
    """Grey-scale erosion: the minimum over the (2 pixels + 1)^2 square around each pixel.

    mask : (H, W) or (B, H, W) weights (bool -> float64). Pixels beyond the image border count
    as valid (the Sobel stencil never reaches past the border: the losses crop it). Equals
    ``scipy.ndimage.minimum_filter(mask, size=2 * pixels + 1, mode="constant", cval=inf)``.
    Returns the same shape, floating point."""
    m, single = _as3(mask, "mask")
    if int(pixels) != pixels or pixels < 0:
        raise ValueError(f"pixels must be an integer >= 0, got {pixels!r}")
    if pixels:
        k = 2 * int(pixels) + 1
        m = -F.max_pool2d(-m[:, None], k, stride=1, padding=int(pixels))[:, 0]
    return m[0] if single else m


def pool_mask(mask: torch.Tensor, factor: int = 1, erode: int = 1) -> torch.Tensor:
    """The weights a mask of usable pixels gives the Sobel gradients of an image binned by ``factor``.

    mask : (H, W) or (B, H, W) weights in [0, 1] (or bool) of the full-resolution pixels.
    1. **min-pool** by ``factor`` x ``factor`` (size ``H // factor`` x ``W // factor``, as
       ``avg_pool2d`` of the image): a coarse pixel is as valid as its least valid fine pixel
       (a binary mask: valid only if all of them are);
    2. **erode** by ``erode`` pixels (:func:`erode_mask`): a pixel keeps its weight only if all
       pixels of its 3 x 3 Sobel stencil are valid, so nothing outside the mask reaches the
       gradients (``erode=0`` skips it).
    Returns (h, w) or (B, h, w) floating point."""
    m, single = _as3(mask, "mask")
    s = int(factor)
    if s != factor or s < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    if s > 1:
        if m.shape[-1] < s or m.shape[-2] < s:
            raise ValueError(f"factor {s} is larger than the mask {tuple(m.shape[-2:])}")
        m = -F.max_pool2d(-m[:, None], s)[:, 0]
    m = erode_mask(m, erode)
    return m[0] if single else m


def _gauss_kernel(sigma: float, dtype, device, truncate: float = 4.0) -> torch.Tensor:
    r = int(truncate * sigma + 0.5)
    x = torch.arange(-r, r + 1, dtype=dtype, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(img: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian blur of (H, W) or (B, H, W) images, sigma in pixels (0: unchanged).

    Borders replicate the edge pixel; equals ``scipy.ndimage.gaussian_filter(img, sigma,
    mode="nearest", truncate=truncate)`` per image. Differentiable."""
    x, single = _as3(img, "image")
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    if sigma > 0:
        k = _gauss_kernel(float(sigma), x.dtype, x.device, truncate)
        r = (len(k) - 1) // 2
        y = x[:, None]
        y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
        y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
        x = y[:, 0]
    return x[0] if single else x


def masked_blur(img: torch.Tensor, weights: Optional[torch.Tensor], sigma: float,
                truncate: float = 4.0) -> torch.Tensor:
    """Normalised convolution ``G*(w img) / G*(w)``: a Gaussian blur that only averages pixels
    of positive weight, so values outside a mask never enter (Knutsson & Westin, CVPR 1993).

    img : (B, H, W); weights : (B, H, W) >= 0 or None (plain :func:`gaussian_blur`). Where no
    weighted pixel lies within the kernel the image is returned unchanged. Zero padding at the
    image border (the normalisation makes it exact there too)."""
    if weights is None or sigma == 0:
        return gaussian_blur(img, sigma, truncate)
    k = _gauss_kernel(float(sigma), img.dtype, img.device, truncate)
    r = (len(k) - 1) // 2

    def g(z):
        z = F.conv2d(F.pad(z[:, None], (r, r, 0, 0)), k.view(1, 1, 1, -1))
        return F.conv2d(F.pad(z, (0, 0, r, r)), k.view(1, 1, -1, 1))[:, 0]

    w = weights.to(img.dtype)
    num, den = g(w * img), g(w)
    ok = den > 1e-6
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), img)


def robust_ngc(model: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None,
               sigma: float = 0.0, outlier: Optional[float] = 1.5, eps: float = DEFAULT_EPS,
               return_weights: bool = False):
    """NGC that tolerates what a real X-ray has and the model has not, in [-1, 1].

    model : the rendered image(s), target : the X-ray(s), (H, W) or (B, H, W) (the order matters:
    outliers are judged in the target). mask : weights (H, W) or (B, H, W) of the gradient pixels,
    as :func:`pool_mask` gives them (0 outside the usable field and on its one-pixel rim).

    1. Both images are blurred by a Gaussian of ``sigma`` pixels (0: none) by
       :func:`masked_blur` with the mask's support as weights (outside pixels never enter), which
       tames quantum noise and matches the detector's blur.
    2. Sobel gradients (the (H-2, W-2) interior) of both.
    3. ``outlier`` (None: off): both gradient magnitudes are normalised by their mean over the
       mask (so the test ignores the target's unknown scale, e.g. a log image of unknown gain,
       and the contrast that scatter takes away); target pixels whose normalised magnitude
       exceeds ``outlier`` times the largest normalised model magnitude in the mask (a threshold
       treated as a constant: no gradient flows through it) get weight 0, as do their
       neighbours within ``1 + ceil(2 sigma)`` pixels (the blur spreads the flanks): structures
       much sharper or denser than anything in the model (a wire, a screw, a shutter edge left
       in the field). A model that is flat in the field disables the test.
    4. ``0.5 (NCC_w(gx) + NCC_w(gy))`` with those weights, as :func:`ngc`.

    Returns () or (B,) (and the (B, H-2, W-2) weights used with ``return_weights``).
    """
    a3, b3, w, single = _prepare(model, target, mask)
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    if outlier is not None and not outlier > 0:
        raise ValueError(f"outlier must be > 0 or None, got {outlier!r}")
    if sigma > 0:
        sup = None if w is None else (w > 0).to(a3.dtype)
        a3, b3 = masked_blur(a3, sup, sigma), masked_blur(b3, sup, sigma)
    ax, ay = sobel(a3)
    bx, by = sobel(b3)
    wi = torch.ones_like(ax) if w is None else w[:, 1:-1, 1:-1]
    _check_weights(wi, "the image interior (border pixels are dropped by the Sobel stencil)")
    if outlier is not None:
        with torch.no_grad():
            gm = torch.sqrt(ax * ax + ay * ay)
            gt = torch.sqrt(bx * bx + by * by)
            inside = (wi > 0).to(gm.dtype)
            n_in = inside.flatten(1).sum(1).clamp(min=1.0)
            mean_m = (gm * inside).flatten(1).sum(1) / n_in                        # (B,)
            mean_t = (gt * inside).flatten(1).sum(1) / n_in
            mmax = (gm * inside).flatten(1).max(1).values
            # |g_t| / mean_t > outlier * max|g_m| / mean_m
            thr = (outlier * mmax / mean_m.clamp(min=1e-300) * mean_t)[:, None, None]
            bad = (gt > thr) & (thr > 0) & (mean_m > 0)[:, None, None] & (inside > 0)
            rd = 1 + int(math.ceil(2 * sigma))  # the blur spreads a wire's flanks by ~2 sigma
            bad = F.max_pool2d(bad[:, None].to(ax.dtype), 2 * rd + 1, stride=1, padding=rd)[:, 0] > 0
            keep = torch.where(bad, torch.zeros_like(wi), wi)
            # never reject everything: fall back to the mask alone
            empty = keep.flatten(1).sum(1) <= 0
            wi = torch.where(empty[:, None, None], wi, keep)
    val = 0.5 * (_corr(ax, bx, wi, eps, (-2, -1)) + _corr(ay, by, wi, eps, (-2, -1)))
    val = _out(val, single)
    if return_weights:
        return val, (wi[0] if single else wi)
    return val


def robust_ngc_loss(model, target, mask=None, sigma: float = 0.0, outlier: Optional[float] = 1.5,
                    eps: float = DEFAULT_EPS, reduction: str = "mean") -> torch.Tensor:
    """``1 - robust_ngc``, in [0, 2], 0 best."""
    return _reduce(1.0 - robust_ngc(model, target, mask, sigma, outlier, eps), reduction)
