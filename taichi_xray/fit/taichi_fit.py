"""Registration loss and gradient computed entirely by Taichi (``ti.ad.Tape``), no torch autograd.

:class:`TaichiPoseLoss` evaluates ``1 - NGC(line integral of the render at a
rigid pose, target)`` and its gradient w.r.t. the six pose parameters with one
``ti.ad.Tape``: the pose kernel, the rasterizer (its z-buffer gradient
registered with ``ti.ad.grad_replaced`` / ``ti.ad.grad_for``), Beer-Lambert,
the line integral, Sobel gradients and NGC are all Taichi kernels, and the
tape runs their gradients in reverse. torch tensors only hold the arrays; on
Vulkan/Metal (:func:`taichi_xray.runtime.resident`) they are ``ti.ndarray`` on the
device instead, so an evaluation uploads the six parameters and reads back the
loss and its gradient (and the image when asked), nothing else.
The torch route (:func:`taichi_xray.fit.register`) computes the same loss and
gradient through :class:`~taichi_xray.torch.XRayRenderer`; tests compare them.

``demos/fit_live.py`` (default mode) fits a pose live in the GGUI window with
it and a plain Adam step.
"""
from __future__ import annotations

import numpy as np
import taichi as ti
import torch

from .. import runtime
from ..kernels import buffers as kb
from ..kernels import fit as kf
from ..pipeline import Pipeline

__all__ = ["TaichiPoseLoss", "Adam"]


class TaichiPoseLoss:
    """``loss, grad = TaichiPoseLoss(pipeline, target)(params)``.

    Parameters
    ----------
    pipeline : a :class:`Pipeline` with materials (its cameras are the views; one vertex set).
    target : (V, H, W) or (H, W) line-integral images, one per camera.
    template : (N, 3) vertices at zero pose (default: the pipeline's scene vertices).
    centre : (3,) rotation centre, mm (default: the moving vertices' centroid).
    moving : names or indices of the objects that move (default: all).
    mask : (V, H, W) or (H, W) non-negative weights of target pixels (default: all 1).

    ``params`` (6,): rotation vector in degrees and translation in mm. Returns the loss
    (float) and its gradient (6,) float64.
    """

    def __init__(self, pipeline: Pipeline, target, template=None, centre=None, moving=None, mask=None):
        if pipeline.mode != "materials":
            raise ValueError("TaichiPoseLoss needs a pipeline with materials")
        self.pipe = pipeline
        dev = pipeline.pack_vertices(template).device if template is not None or pipeline.default_vertices is not None \
            else "cpu"
        T = np.asarray(pipeline.default_vertices if template is None else template, np.float64)
        if T.shape != (pipeline.n_vertices, 3):
            raise ValueError(f"template must have shape ({pipeline.n_vertices}, 3), got {T.shape}")
        mov = np.ones(len(T))
        if moving is not None:
            idx = [pipeline.names.index(m) if isinstance(m, str) else int(m) for m in moving]
            mov[:] = 0
            for p in idx:
                mov[pipeline.vertex_offsets[p]:pipeline.vertex_offsets[p + 1]] = 1
        c = T[mov > 0].mean(0) if centre is None else np.asarray(centre, np.float64)
        tgt = np.asarray(target, np.float64)
        tgt = tgt[None] if tgt.ndim == 2 else tgt
        nv, H, W = len(pipeline.cameras), *pipeline.image_shape
        if tgt.shape != (nv, H, W):
            raise ValueError(f"target must have shape ({nv}, {H}, {W}), got {tgt.shape}")
        m = np.ones_like(tgt) if mask is None else np.broadcast_to(np.asarray(mask, np.float64), tgt.shape)
        if (m < 0).any() or not np.isfinite(m).all():
            raise ValueError("mask weights must be finite and non-negative")
        pipeline.set_instances(None)
        f64 = dict(dtype=torch.float64, device=dev)
        self.template = torch.as_tensor(T, **f64).contiguous()
        self.centre = torch.as_tensor(c, **f64)
        self.moving = torch.as_tensor(mov, **f64)
        self.mask = torch.as_tensor(m, **f64).contiguous()
        self.params = torch.zeros(6, requires_grad=True, **f64)
        self.V = torch.zeros((1, len(T), 3), dtype=pipeline.dtype, device=dev, requires_grad=True)
        pdt = pipeline.physics_dtype or pipeline.dtype
        self.I = torch.zeros((1, nv, H, W), dtype=pdt, device=dev, requires_grad=True)
        self.LI = torch.zeros((nv, H, W), requires_grad=True, **f64)
        self.gx = torch.zeros((nv, H, W), requires_grad=True, **f64)
        self.gy = torch.zeros((nv, H, W), requires_grad=True, **f64)
        tg = torch.as_tensor(tgt, **f64)
        self.tx = torch.zeros_like(tg)
        self.ty = torch.zeros_like(tg)
        kf.sobel(tg.contiguous(), self.tx, self.ty)  # the target's gradients, once
        self.sums = torch.zeros((nv, 2, 6), requires_grad=True, **f64)
        self.loss = torch.zeros(1, requires_grad=True, **f64)
        self._I0 = pipeline.physics_tables(pdt, self.I.device)[2]
        self._bufs = [self.params, self.V, self.I, self.LI, self.gx, self.gy, self.sums, self.loss]
        self.resident = runtime.resident() and pipeline.resident_ok()
        if self.resident:  # the same arrays as ti.ndarray on the device (Vulkan/Metal)
            def nd(t, grad):
                a = ti.ndarray(kb.TI_DTYPE[t.dtype], tuple(t.shape), needs_grad=grad)
                a.from_numpy(t.detach().cpu().numpy())
                return a

            for name in ("template", "centre", "moving", "mask", "tx", "ty"):
                setattr(self, name, nd(getattr(self, name), False))
            self._bufs = [nd(b, True) for b in self._bufs]
            self.params, self.V, self.I, self.LI, self.gx, self.gy, self.sums, self.loss = self._bufs

    def __call__(self, params) -> tuple[float, np.ndarray]:
        p = np.asarray(params, np.float64)
        if p.shape != (6,) or not np.isfinite(p).all():
            raise ValueError(f"params must be 6 finite numbers (rotation vector deg, translation mm), got {p}")
        if self.resident:
            self.params.from_numpy(p)
            for b in self._bufs[1:]:
                b.fill(0)
            for b in self._bufs:  # Taichi accumulates gradients: start from zero
                b.grad.fill(0)
        else:
            with torch.no_grad():
                self.params.copy_(torch.as_tensor(p))
                for b in self._bufs[1:]:
                    b.zero_()
            for b in self._bufs:  # Taichi accumulates gradients: start from zero
                if b.grad is None:
                    b.grad = torch.zeros_like(b)
                else:
                    b.grad.zero_()
        real = kb.TI_DTYPE[kb.torch_dtype(self.V)]
        with ti.ad.Tape(loss=self.loss):
            kf.rigid_pose(self.template, self.params, self.centre, self.moving, self.V, real)
            self.pipe.taichi_forward(self.V, self.I)
            kf.line_integral(self.I, float(self._I0), self.LI)
            kf.sobel(self.LI, self.gx, self.gy)
            kf.moments(self.gx, self.gy, self.tx, self.ty, self.mask, self.sums)
            kf.ngc_loss(self.sums, self.loss)
        if self.resident:
            return float(self.loss.to_numpy()[0]), self.params.grad.to_numpy().astype(np.float64)
        return float(self.loss.detach()[0]), self.params.grad.detach().cpu().numpy().copy()

    def image(self) -> np.ndarray:
        """The line integral (V, H, W) of the last evaluation."""
        return kb.to_numpy(self.LI).copy()


class Adam:
    """Adam (Kingma & Ba 2015) on a numpy parameter vector, for loops without torch."""

    def __init__(self, x0, lr: float = 0.5, betas=(0.9, 0.999), eps: float = 1e-8):
        self.x = np.asarray(x0, np.float64).copy()
        self.lr, (self.b1, self.b2), self.eps = float(lr), betas, eps
        self.m = np.zeros_like(self.x)
        self.v = np.zeros_like(self.x)
        self.t = 0

    def step(self, grad) -> np.ndarray:
        g = np.asarray(grad, np.float64)
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        mh = self.m / (1 - self.b1 ** self.t)
        vh = self.v / (1 - self.b2 ** self.t)
        self.x -= self.lr * mh / (np.sqrt(vh) + self.eps)
        return self.x
