"""The Beer-Lambert stage on arrays: per-object path lengths -> detector intensity.

Shapes and units
----------------
L       (P, H, W)  path length of each pixel's ray inside each closed mesh, mm
parents list[int]  parent object of each object, -1 for none (the world / air)
L_excl  (P', H, W) length of each object's *own* material (its L minus its direct children's L), mm
mu      (P', E)    linear attenuation, 1/mm
weights (E,)       photons per energy bin times detector response
I       (H, W)     I = sum_E weights[E] * exp(-sum_p mu[p, E] * L_excl[p])

``beer_lambert`` runs the one Beer-Lambert kernel of the package
(:func:`taichi_xray.kernels.physics.beer_lambert`, the same the
:class:`~taichi_xray.pipeline.Pipeline` runs); it accepts numpy arrays or
torch tensors in float32 or float64 (all inputs the same dtype) and returns the
same kind and dtype. Its backward, ``beer_lambert_backward``, is Taichi's
reverse-mode autodiff of that kernel by default (on the inputs' device, mu and
weight gradients only when asked for), and ``method="analytic"`` is the
closed-form vector-Jacobian product written with torch, kept as the
independent reference the tests compare against.

``exclusive_lengths`` is a linear map written with plain array operations, so
it works on numpy and on torch tensors (where torch autograd differentiates it).
Renders do not need it: the pipeline's rasterizer accumulates per-material
exclusive lengths directly.
"""
# (no "from __future__ import annotations": Taichi reads the kernel annotations at runtime)

from typing import Sequence

import numpy as np
import taichi as ti

from ..runtime import ensure_init
from .materials import get_material, mu_matrix

try:  # torch is optional for this module
    import torch
except ImportError:  # pragma: no cover
    torch = None


def _is_torch(x) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


# ----------------------------------------------------------------------------------------
# exclusive lengths
# ----------------------------------------------------------------------------------------
def _check_parents(parents: Sequence[int], P: int) -> list[int]:
    parents = [int(p) for p in parents]
    if len(parents) != P:
        raise ValueError(f"parents has {len(parents)} entries but there are {P} objects")
    for i, p in enumerate(parents):
        if p < -1 or p >= P:
            raise ValueError(f"parents[{i}] = {p} is not -1 or an object index in [0, {P})")
        if p == i:
            raise ValueError(f"object {i} is its own parent")
    for i in range(P):  # cycle check
        seen, j = set(), i
        while j != -1:
            if j in seen:
                raise ValueError(f"parents contain a cycle through object {j}")
            seen.add(j)
            j = parents[j]
    return parents


def exclusive_matrix(parents: Sequence[int], with_air: bool = False) -> np.ndarray:
    """Matrix A, (P', P) float64, with L_excl = A @ L (over the object axis).

    A[p, p] = 1 and A[parent(q), q] = -1.  With ``with_air`` an extra last row
    (P' = P + 1) holds -1 for every top-level object (its ray length is added separately).
    """
    P = len(parents)
    parents = _check_parents(parents, P)
    A = np.eye(P + int(with_air), P)
    for q, p in enumerate(parents):
        if p >= 0:
            A[p, q] -= 1.0
        elif with_air:
            A[P, q] -= 1.0
    return A


def exclusive_lengths(L, parents: Sequence[int], ray_lengths=None, check: bool = True,
                      tol_mm: float = 1e-3):
    """Lengths of each object's own material region.

    L : (P, H, W) numpy array or torch tensor, mm.  parents : P ints, -1 = top level.
    ray_lengths : optional (H, W) source-to-pixel ray length, mm; then an air row
    (ray length minus the sum of top-level objects' L) is appended, output (P+1, H, W).
    check : raise ValueError if an exclusive length is below -tol_mm (a child that is
    longer than its parent means the nesting or the meshes are wrong).  Small negative
    values (rasterization round-off) are kept as they are, so the map stays linear.
    """
    if L.ndim != 3:
        raise ValueError(f"L must have shape (P, H, W), got {tuple(L.shape)}")
    P = L.shape[0]
    _check_parents(parents, P)
    A = exclusive_matrix(parents, with_air=ray_lengths is not None)
    if _is_torch(L):
        At = torch.as_tensor(A, dtype=L.dtype, device=L.device)
        out = torch.einsum("ap,phw->ahw", At, L)
        if ray_lengths is not None:
            R = torch.as_tensor(ray_lengths, dtype=L.dtype, device=L.device)
            if tuple(R.shape) != tuple(L.shape[1:]):
                raise ValueError(f"ray_lengths shape {tuple(R.shape)} != image shape {tuple(L.shape[1:])}")
            out = torch.cat([out[:P], (out[P] + R)[None]], 0)
        bad_min = float(out.min()) if out.numel() else 0.0
    else:
        L = np.asarray(L)
        out = np.einsum("ap,phw->ahw", A.astype(L.dtype), L)
        if ray_lengths is not None:
            R = np.asarray(ray_lengths, dtype=L.dtype)
            if R.shape != L.shape[1:]:
                raise ValueError(f"ray_lengths shape {R.shape} != image shape {L.shape[1:]}")
            out[P] += R
        bad_min = float(out.min()) if out.size else 0.0
    if check and bad_min < -tol_mm:
        o = out.detach().cpu().numpy() if _is_torch(out) else out
        p = int(np.unravel_index(np.argmin(o), o.shape)[0])
        who = "the air term" if p == P else f"object {p}"
        raise ValueError(f"exclusive length of {who} is {bad_min:.4g} mm < 0: a child is longer "
                         "than its parent (wrong nesting or a non-closed mesh?)")
    return out


_NP2TI = {np.dtype(np.float32): ti.f32, np.dtype(np.float64): ti.f64}


def _prepare(L_excl, mu, weights):
    """Validate shapes/dtypes/finiteness; return (kind, dtype, arrays) with contiguous arrays."""
    arrs = [L_excl, mu, weights]
    is_t = [_is_torch(a) for a in arrs]
    if any(is_t) and not all(is_t):
        raise TypeError("beer_lambert: give all inputs as numpy arrays or all as torch tensors")
    if all(is_t):
        dts = {a.dtype for a in arrs}
        if len(dts) != 1 or next(iter(dts)) not in (torch.float32, torch.float64):
            raise TypeError(f"beer_lambert: inputs must share float32 or float64 dtype, got {dts}")
        arrs = [a.detach().contiguous() for a in arrs]
        np_dt = np.dtype(np.float32) if arrs[0].dtype == torch.float32 else np.dtype(np.float64)
        finite = all(bool(torch.isfinite(a).all()) for a in arrs)
    else:
        arrs = [np.asarray(a) for a in arrs]
        dts = {a.dtype for a in arrs}
        if len(dts) != 1 or next(iter(dts)) not in _NP2TI:
            raise TypeError(f"beer_lambert: inputs must share float32 or float64 dtype, got "
                            f"{sorted(str(d) for d in dts)}")
        arrs = [np.ascontiguousarray(a) for a in arrs]
        np_dt = arrs[0].dtype
        finite = all(bool(np.isfinite(a).all()) for a in arrs)
    L, m, w = arrs
    if L.ndim != 3:
        raise ValueError(f"L_excl must have shape (P, H, W), got {tuple(L.shape)}")
    if m.ndim != 2 or m.shape[0] != L.shape[0]:
        raise ValueError(f"mu must have shape (P={L.shape[0]}, E), got {tuple(m.shape)}")
    if w.ndim != 1 or w.shape[0] != m.shape[1]:
        raise ValueError(f"weights must have shape (E={m.shape[1]},), got {tuple(w.shape)}")
    if not finite:
        names = ["L_excl", "mu", "weights"]
        bad = [n for n, a in zip(names, arrs)
               if not (bool(torch.isfinite(a).all()) if all(is_t) else bool(np.isfinite(a).all()))]
        raise ValueError(f"beer_lambert: {', '.join(bad)} contain NaN or infinity")
    return all(is_t), np_dt, L, m, w


def _padded(L, m, w, is_t):
    """torch tensors on the kernels' device: L (1, P, H, W), mu (P, E8), w (1, 1, E8) zero-padded."""
    from ..kernels.physics import E_CHUNK
    from ..runtime import torch_device

    dev = L.device if is_t else torch_device()
    Lt = (L if is_t else torch.from_numpy(L)).to(dev)
    mt = (m if is_t else torch.from_numpy(m)).to(dev)
    wt = (w if is_t else torch.from_numpy(w)).to(dev)
    E = mt.shape[1]
    E8 = -(-E // E_CHUNK) * E_CHUNK
    mp = torch.zeros((mt.shape[0], E8), dtype=mt.dtype, device=dev)
    mp[:, :E] = mt
    wp = torch.zeros((1, 1, E8), dtype=wt.dtype, device=dev)
    wp[0, 0, :E] = wt
    return Lt[None].contiguous(), mp, wp


def beer_lambert(L_excl, mu, weights):
    """I (H, W) = sum_E weights[E] * exp(-sum_p mu[p, E] * L_excl[p]).

    L_excl (P, H, W) mm, mu (P, E) 1/mm, weights (E,): all numpy or all torch, one dtype
    (float32 or float64).  Returns the same kind and dtype (torch: on L_excl's device).
    """
    from ..kernels.physics import beer_lambert as _kernel

    ensure_init()
    is_t, np_dt, L, m, w = _prepare(L_excl, mu, weights)
    H, W = L.shape[1], L.shape[2]
    if not (H * W and m.shape[1]):
        return torch.zeros((H, W), dtype=L.dtype, device=L.device) if is_t else np.zeros((H, W), np_dt)
    Lp, mp, wp = _padded(L, m, w, is_t)
    out = torch.zeros((1, 1, H, W), dtype=Lp.dtype, device=Lp.device)
    _kernel(Lp, mp, wp, out, int(L.shape[0]), 1, 0)
    ti.sync()
    out = out[0, 0]
    return out.to(L.device) if is_t else out.cpu().numpy()


def beer_lambert_backward(L_excl, mu, weights, grad_I, return_weights_grad: bool = False,
                          method: str = "autodiff", chunk: int = 16):
    """Vector-Jacobian product of :func:`beer_lambert`.

    grad_I (H, W): dLoss/dI.  Returns (grad_L (P, H, W), grad_mu (P, E)) [, grad_weights (E,)]
    in the kind and dtype of the inputs.

    method="autodiff" (default): Taichi's reverse mode of the forward kernel
    (``beer_lambert.grad``) on the inputs' device. The mu and weight gradients are sums over
    all pixels (atomic additions on P*E addresses); the kernel is specialised on which
    inputs need gradients, so they cost nothing when not asked for.
    method="analytic": the closed form, written with torch, kept as the reference: with
    T_e = exp(-sum_p mu_pe L_p) and G_e = -grad_I w_e T_e, grad_L = sum_e G_e mu_pe,
    grad_mu = sum_pixels G_e L_p, grad_w = sum_pixels grad_I T_e, ``chunk`` energies at a
    time (memory chunk*H*W).
    """
    if method == "analytic":
        return _backward_analytic(L_excl, mu, weights, grad_I, return_weights_grad, chunk)
    if method != "autodiff":
        raise ValueError(f"method must be 'autodiff' or 'analytic', got {method!r}")
    from ..kernels.physics import beer_lambert as _kernel

    ensure_init()
    is_t, np_dt, L, m, w = _prepare(L_excl, mu, weights)
    gI = grad_I.detach() if _is_torch(grad_I) else torch.from_numpy(np.ascontiguousarray(grad_I))
    if is_t != _is_torch(grad_I):
        raise TypeError("grad_I must be a torch tensor when the inputs are (and numpy when they are)")
    if tuple(gI.shape) != tuple(L.shape[1:]):
        raise ValueError(f"grad_I must have shape {tuple(L.shape[1:])}, got {tuple(gI.shape)}")
    if not bool(torch.isfinite(gI).all()):
        raise ValueError("grad_I contains NaN or infinity")
    Lp, mp, wp = _padded(L, m, w, is_t)
    E = m.shape[1]
    Lp.requires_grad_(True)
    Lp.grad = torch.zeros_like(Lp)
    mp.requires_grad_(True)
    mp.grad = torch.zeros_like(mp)
    if return_weights_grad:
        wp.requires_grad_(True)
        wp.grad = torch.zeros_like(wp)
    out = torch.zeros((1, 1) + tuple(L.shape[1:]), dtype=Lp.dtype, device=Lp.device, requires_grad=True)
    out.grad = gI.to(device=Lp.device, dtype=Lp.dtype).reshape(out.shape).contiguous()
    if L.shape[1] * L.shape[2] and E:
        _kernel.grad(Lp, mp, wp, out, int(L.shape[0]), 1, 0)
        ti.sync()
    res = [Lp.grad[0], mp.grad[:, :E]] + ([wp.grad[0, 0, :E]] if return_weights_grad else [])
    res = [r.detach().to(L.device) if is_t else r.detach().cpu().numpy() for r in res]
    return tuple(res)


def _backward_analytic(L_excl, mu, weights, grad_I, return_weights_grad, chunk):
    is_t, np_dt, L, m, w = _prepare(L_excl, mu, weights)
    if is_t:
        if not _is_torch(grad_I):
            raise TypeError("grad_I must be a torch tensor like the other inputs")
        g = grad_I.detach().to(device=L.device, dtype=L.dtype)
    else:
        L, m, w = (torch.from_numpy(a) for a in (L, m, w))
        g = torch.from_numpy(np.ascontiguousarray(grad_I, dtype=np_dt))
    if tuple(g.shape) != tuple(L.shape[1:]):
        raise ValueError(f"grad_I must have shape {tuple(L.shape[1:])}, got {tuple(g.shape)}")
    if not bool(torch.isfinite(g).all()):
        raise ValueError("grad_I contains NaN or infinity")
    gL = torch.zeros_like(L)
    gm = torch.zeros_like(m)
    gw = torch.zeros_like(w)
    for e0 in range(0, m.shape[1], max(int(chunk), 1)):
        mc = m[:, e0:e0 + chunk]
        T = torch.exp(-torch.einsum("pe,phw->ehw", mc, L))  # (e, H, W)
        gw[e0:e0 + chunk] = torch.einsum("ehw,hw->e", T, g)
        G = T.mul_(g).mul_(-w[e0:e0 + chunk, None, None])  # in place: T is not needed again
        gL += torch.einsum("ehw,pe->phw", G, mc)
        gm[:, e0:e0 + chunk] = torch.einsum("ehw,phw->pe", G, L)
    res = [gL, gm] + ([gw] if return_weights_grad else [])
    if not is_t:
        res = [r.numpy() for r in res]
    return tuple(res)


if torch is not None:
    class BeerLambertFunction(torch.autograd.Function):
        """torch autograd wrapper: I = BeerLambertFunction.apply(L_excl, mu, weights)."""

        @staticmethod
        def forward(ctx, L_excl, mu, weights):
            ctx.save_for_backward(L_excl, mu, weights)
            return beer_lambert(L_excl, mu, weights)

        @staticmethod
        def backward(ctx, grad_I):
            L, m, w = ctx.saved_tensors
            gL, gm, gw = beer_lambert_backward(L, m, w, grad_I.contiguous(), return_weights_grad=True)
            return gL, gm, gw


# ----------------------------------------------------------------------------------------
# convenience
# ----------------------------------------------------------------------------------------
def _setup(L_per_object, parents, materials, spectrum, detector, mu_scale, ray_lengths):
    mats = [get_material(m) for m in materials]
    if len(mats) != L_per_object.shape[0]:
        raise ValueError(f"{len(mats)} materials for {L_per_object.shape[0]} objects")
    e = spectrum.energies
    mu = mu_matrix(mats, e)
    if mu_scale is not None:
        s = np.asarray(mu_scale.detach().cpu() if _is_torch(mu_scale) else mu_scale, dtype=np.float64)
        if s.shape != (len(mats),):
            raise ValueError(f"mu_scale must have shape ({len(mats)},), got {s.shape}")
        mu = mu * s[:, None]
    if ray_lengths is not None:
        mu = np.vstack([mu, get_material("air").mu(e)[None]])
    weights = spectrum.photons * (detector.response(e) if detector is not None else 1.0)
    L_excl = exclusive_lengths(L_per_object, parents, ray_lengths=ray_lengths)
    if _is_torch(L_excl):
        mu = torch.as_tensor(mu, dtype=L_excl.dtype, device=L_excl.device)
        weights = torch.as_tensor(weights, dtype=L_excl.dtype, device=L_excl.device)
    else:
        mu, weights = mu.astype(L_excl.dtype), weights.astype(L_excl.dtype)
    return L_excl, mu, weights


def render_intensity(L_per_object, parents, materials, spectrum, detector=None, mu_scale=None,
                     ray_lengths=None):
    """Detector signal I (H, W) for path lengths L_per_object (P, H, W) mm.

    materials : P material specs (see get_material).  spectrum : Spectrum.  detector :
    Detector or None (ideal photon counter).  mu_scale : optional (P,) factors on each
    material's mu.  ray_lengths : optional (H, W) source-pixel distance in mm for an air term.
    """
    L_excl, mu, w = _setup(L_per_object, parents, materials, spectrum, detector, mu_scale, ray_lengths)
    return beer_lambert(L_excl, mu, w)


def unattenuated_intensity(spectrum, detector=None) -> float:
    """I0: the intensity with all path lengths zero = sum_E weights[E]."""
    w = spectrum.photons * (detector.response(spectrum.energies) if detector is not None else 1.0)
    return float(np.sum(w))


def transmission(L_per_object, parents, materials, spectrum, detector=None, mu_scale=None,
                 ray_lengths=None):
    """I / I0, (H, W), with I0 = the intensity with all lengths zero."""
    I = render_intensity(L_per_object, parents, materials, spectrum, detector, mu_scale, ray_lengths)
    return I / unattenuated_intensity(spectrum, detector)


def line_integral(L_per_object, parents, materials, spectrum, detector=None, mu_scale=None,
                  ray_lengths=None):
    """-log(I / I0), (H, W)."""
    T = transmission(L_per_object, parents, materials, spectrum, detector, mu_scale, ray_lengths)
    return -torch.log(T) if _is_torch(T) else -np.log(T)


def add_poisson_noise(image, photons_per_pixel: float, seed: int):
    """Seeded Poisson noise on a normalised image (transmission, 0..~1).

    Returns counts / photons_per_pixel with counts ~ Poisson(image * photons_per_pixel),
    same shape; numpy in -> float64 numpy out, torch in -> torch of the input dtype/device.
    The same seed gives the same noise.
    """
    was_t = _is_torch(image)
    x = image.detach().cpu().numpy() if was_t else np.asarray(image)
    n0 = float(photons_per_pixel)
    if not (n0 > 0 and np.isfinite(n0)):
        raise ValueError(f"photons_per_pixel must be > 0, got {photons_per_pixel}")
    if not np.isfinite(x).all():
        raise ValueError("image contains NaN or infinity")
    if (x < 0).any():
        raise ValueError("image must be >= 0 (a transmission or normalised intensity)")
    rng = np.random.default_rng(seed)
    noisy = rng.poisson(x.astype(np.float64) * n0) / n0
    if was_t:
        return torch.as_tensor(noisy, dtype=image.dtype, device=image.device)
    return noisy
