"""torch autograd Functions over the :class:`~taichi_xray.pipeline.Pipeline`.

:class:`PipelineFunction` runs the pipeline's Taichi kernels forward and, in
its backward, the same kernels' gradients: Taichi's reverse-mode autodiff of
the Beer-Lambert kernel (``beer_lambert.grad``) and the hand-written
path-length backward over the saved K slots,
``dC/dv_i = sum over slots of dC/dL * w_f * b_i * n / |n . d|`` (the paper's
``dC/dz = dC/dL * sign`` pushed through the exact ray-plane depth; ``b_i``
are the barycentric coordinates of the hit point, ``n`` the face normal,
``d`` the unit ray, ``w_f`` the face's channel weight). Taichi autodiff is
not used for the rasterizer itself: its forward kernel hands out slots with an
atomic counter, which autodiff cannot replay.

Inputs are kept with ``ctx.save_for_backward``, so changing the vertices in
place between forward and backward raises as everywhere in torch; the
backward is ``@once_differentiable``. The slot buffers are pooled between
calls; if a later forward has overwritten them before this backward runs,
the backward re-rasterizes the saved vertices first (correct, one forward
slower).

Only the depths are differentiated: which faces cover a pixel is piecewise
constant in the vertices, so moving a silhouette edge across a pixel centre
is not seen by the gradient. For a smooth closed mesh the path length goes to
0 continuously at the silhouette, so the image is continuous there, but its
gradient grows like 1/|n . d| (as the true chord's does, L = 2 sqrt(R^2 - b^2)).
Pixels flagged by the unbalanced-pixel fallback or by K overflow get exactly
zero gradient.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from .. import runtime
from ..camera import Camera
from ..kernels import physics as kp

__all__ = ["path_lengths", "PipelineFunction", "RasterFunction", "PhysicsFunction"]


class PipelineFunction(torch.autograd.Function):
    """``out = PipelineFunction.apply(pipeline, V (S, N, 3), tables, [face_w (M, J), [face_lin, obj_xref]])``.

    ``tables`` is None (the pipeline's own face weights) or (face_ch, face_w, affine tables) from
    :meth:`Pipeline.torch_face_tables`, whose tensors follow as inputs so that their gradients
    (w.r.t. attenuation scales and tetrahedral densities, through torch) flow back. Returns the
    Beer-Lambert sums (B, I, H, W) of a pipeline with materials, or the channel images
    (I, C, H, W) of a path-length pipeline.
    """

    @staticmethod
    def forward(ctx, pipe, V, tables, *weights):
        need_v = ctx.needs_input_grad[1]
        need_w = any(ctx.needs_input_grad[3:])
        rz = pipe.rasterizer(V.dtype)
        if tables is not None:
            ch, W, lin = tables
            rz.set_weights(ch, W.detach())
            rz.set_linear(*((lin[0], lin[1].detach(), lin[2].detach()) if lin else (None, None, None)))
        Vd = V.detach()
        st = pipe.project(Vd, keep_slots=need_v or need_w, tag="torch")
        if pipe.mode == "objects":
            out = st.L.clone()
        else:
            out = pipe.physics(st.L)
        ctx.pipe = pipe
        ctx.state = st
        ctx.gen = rz.generation("torch")
        ctx.tables = tables
        ctx.need_w = need_w
        ctx.save_for_backward(V, *weights)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        V, *weights = ctx.saved_tensors  # raises if V was modified in place since the forward
        pipe = ctx.pipe
        rz = pipe.rasterizer(V.dtype)
        st = ctx.state
        if ctx.tables is not None:
            ch, W, lin = ctx.tables
            rz.set_weights(ch, weights[0].detach())
            rz.set_linear(*((lin[0], weights[1].detach(), weights[2].detach()) if lin else (None, None, None)))
        if rz.generation("torch") != ctx.gen or st.K == 0:
            # the pooled buffers were overwritten by a later forward: rasterize again
            st = pipe.project(V.detach(), keep_slots=True, tag="recompute")
        if pipe.mode == "objects":
            gL = grad_out.contiguous()
        else:
            gL = _beer_lambert_grad(pipe, st.L, grad_out)
        gV, gw = rz.backward(st, gL, want_w=ctx.need_w)
        grads = [None, gV.to(V.device), None]
        if weights:
            grads.append(gw.to(weights[0]) if ctx.need_w else None)
            if len(weights) > 1:
                gl, gx = rz.linear_grads if ctx.need_w else (None, None)
                grads += [None if gl is None else gl.to(weights[1]), None if gx is None else gx.to(weights[2])]
        if ctx.tables is not None:  # back to the pipeline's own weights for plain renders
            rz.set_weights(*pipe._face_tables(rz.dtype))
            pipe._set_linear(rz)
        return tuple(grads)


class RasterFunction(torch.autograd.Function):
    """``L, slot_depth = RasterFunction.apply(pipeline, V, tables, *weights)``: the projection stage
    alone (channel images (I, C, H, W) and the slots' signed depths (I, H, W, K)), for pipelines
    whose channels get more terms before the physics (CT volumes). Gradients w.r.t. both outputs
    flow back to the vertices (and the face weights): a volume's gradient w.r.t. the depth where a
    mesh cuts it arrives through ``slot_depth``."""

    @staticmethod
    def forward(ctx, pipe, V, tables, *weights):
        need_w = any(ctx.needs_input_grad[3:])
        if not len(pipe.faces):  # volumes only: nothing to rasterize
            st = pipe.project(V.detach(), with_volumes=False)
            pipe._torch_state = st
            ctx.empty = True
            return st.L.clone(), torch.zeros((1, 1, 1, 1), dtype=V.dtype)
        ctx.empty = False
        rz = pipe.rasterizer(V.dtype)
        if tables is not None:
            ch, W, lin = tables
            rz.set_weights(ch, W.detach())
            rz.set_linear(*((lin[0], lin[1].detach(), lin[2].detach()) if lin else (None, None, None)))
        st = pipe.project(V.detach(), keep_slots=True, tag="torch", with_volumes=False)
        pipe._torch_state = st
        ctx.pipe, ctx.state, ctx.tables, ctx.need_w = pipe, st, tables, need_w
        ctx.gen = rz.generation("torch")
        ctx.save_for_backward(V, *weights)
        sd = st.slot_depth.clone() if st.slot_depth is not None else torch.zeros((1, 1, 1, 1), dtype=V.dtype)
        return st.L.clone(), sd

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_L, grad_sd):
        if ctx.empty:
            return None, None, None
        V, *weights = ctx.saved_tensors
        pipe = ctx.pipe
        rz = pipe.rasterizer(V.dtype)
        st = ctx.state
        if ctx.tables is not None:
            ch, W, lin = ctx.tables
            rz.set_weights(ch, weights[0].detach())
            rz.set_linear(*((lin[0], weights[1].detach(), weights[2].detach()) if lin else (None, None, None)))
        if rz.generation("torch") != ctx.gen:
            st = pipe.project(V.detach(), keep_slots=True, tag="recompute", with_volumes=False)
        if grad_L is None:
            grad_L = torch.zeros_like(st.L)
        gsd = grad_sd if (grad_sd is not None and st.slot_depth is not None
                          and tuple(grad_sd.shape) == tuple(st.slot_depth.shape)) else None
        gV, gw = rz.backward(st, grad_L.contiguous(), grad_sd=gsd, want_w=ctx.need_w)
        grads = [None, gV.to(V.device), None]
        if weights:
            grads.append(gw.to(weights[0]) if ctx.need_w else None)
            if len(weights) > 1:
                gl, gx = rz.linear_grads if ctx.need_w else (None, None)
                grads += [None if gl is None else gl.to(weights[1]), None if gx is None else gx.to(weights[2])]
        if ctx.tables is not None:
            rz.set_weights(*pipe._face_tables(rz.dtype))
            pipe._set_linear(rz)
        return tuple(grads)


class PhysicsFunction(torch.autograd.Function):
    """``raw = PhysicsFunction.apply(pipeline, L)``: Beer-Lambert sums (B, I, H, W) of channel images
    L (I, C, H, W); backward by Taichi's autodiff of the same kernel."""

    @staticmethod
    def forward(ctx, pipe, L):
        Lc = L.detach().contiguous()
        ctx.pipe = pipe
        ctx.save_for_backward(Lc)
        return pipe.physics(Lc)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        (L,) = ctx.saved_tensors
        return None, _beer_lambert_grad(ctx.pipe, L, grad_out.contiguous()).clone()


def _beer_lambert_grad(pipe, L: torch.Tensor, grad_I: torch.Tensor) -> torch.Tensor:
    """dC/dL (I, C, H, W) from dC/dI (B, I, H, W): Taichi's autodiff of the forward kernel (one
    launch per group of instances that share weights, as in the forward pass)."""
    dt = pipe.physics_dtype or L.dtype
    mu, _, _ = pipe.physics_tables(dt, L.device)
    bufs = pipe.__dict__.setdefault("_grad_bufs", {})

    def buf(name, like):
        t = bufs.get(name)
        if t is None or t.shape != like.shape or t.dtype != like.dtype or t.device != like.device:
            t = torch.zeros_like(like)
            bufs[name] = t
        return t

    gL = buf("gL", L)
    gL.zero_()
    rows = pipe.imaging.rows_mode
    for idx, w in pipe._bl_groups(dt, L.device):
        if idx is None:
            gI = buf("gI", grad_I)
            gI.copy_(grad_I)
            Lg = L.detach().requires_grad_(True)
            Lg.grad = gL
            Ig = buf("I", grad_I).detach().requires_grad_(True)
            Ig.grad = gI
            pipe._launch("bl_grad", kp.beer_lambert, Lg, mu, w, Ig, pipe.n_channels, int(w.shape[0]), rows, grad=True)
        else:
            Lg = L[idx].detach().contiguous().requires_grad_(True)
            Lg.grad = torch.zeros_like(Lg)
            Ig = torch.zeros((w.shape[0], len(idx)) + tuple(L.shape[2:]), dtype=dt, device=L.device,
                             requires_grad=True)
            Ig.grad = grad_I[:, idx].contiguous()
            kp.beer_lambert.grad(Lg, mu, w, Ig, pipe.n_channels, int(w.shape[0]), rows)
            gL[idx] += Lg.grad
    return gL


# ----------------------------------------------------------------------------------------
_PIPES: "OrderedDict" = OrderedDict()


def _faces_key(faces):
    return tuple((id(f), tuple(np.shape(f))) for f in faces)


def path_lengths(vertices, faces, camera: Camera, K: int | None = None, deterministic: bool = False) -> torch.Tensor:
    """Differentiable path lengths of P meshes for one camera.

    Parameters
    ----------
    vertices : sequence of P tensors (N_p, 3), float32 or float64, contiguous (mm).
    faces : sequence of P integer arrays/tensors (M_p, 3).
    camera : Camera
    K : slot capacity (``None``: grow as needed).
    deterministic : bitwise reproducible forward and backward: slots summed in
        face order, and a face-parallel backward without atomics (slower).

    Returns
    -------
    L : tensor (P, H, W) on the device of ``vertices[0]``; differentiable with
        respect to every vertex tensor that requires grad.

    The faces are checked (closure, orientation by signed volume with the first
    vertices) and uploaded once per faces object; the pipeline is cached.
    """
    from ..pipeline import Pipeline

    if isinstance(vertices, torch.Tensor):
        vertices = [vertices]
        faces = [faces]
    vertices = list(vertices)
    faces = list(faces)
    if len(faces) != len(vertices):
        raise ValueError(f"{len(vertices)} vertex tensors but {len(faces)} face arrays")
    _check_vertices(vertices)
    if not isinstance(camera, Camera):
        raise TypeError(f"camera must be a taichi_xray.Camera, got {type(camera).__name__}")
    runtime.ensure_init()
    key = (_faces_key(faces), id(camera), K, bool(deterministic))
    entry = _PIPES.get(key)
    if entry is not None and not all(_same(a, b) for a, b in zip(entry[1], faces)):
        entry = None
    if entry is None:
        pipe = Pipeline([f for f in faces], camera, K=K, deterministic=deterministic, output="path_length",
                        names=[f"meshes[{p}]" for p in range(len(faces))])
        entry = (pipe, [np.array(f.detach().cpu() if isinstance(f, torch.Tensor) else f, copy=True) for f in faces],
                 faces, camera)
        _PIPES[key] = entry
        while len(_PIPES) > 16:
            _PIPES.popitem(last=False)
    _PIPES.move_to_end(key)
    L = entry[0].render_torch(vertices)
    return L[0].to(vertices[0].device)


def _same(a: np.ndarray, f) -> bool:
    """The faces object seen before still holds the same indices (a strided sample: a full
    comparison would cost as much as the call on large meshes)."""
    b = f.detach().cpu().numpy() if isinstance(f, torch.Tensor) else np.asarray(f)
    if a.shape != b.shape:
        return False
    step = max(1, a.size // 4096)
    return np.array_equal(a.reshape(-1)[::step], b.reshape(-1)[::step]) and np.array_equal(a[-1], b[-1])


def _check_vertices(vertices) -> None:
    if len(vertices) == 0:
        raise ValueError("no vertex tensors given")
    dt = vertices[0].dtype if isinstance(vertices[0], torch.Tensor) else None
    for i, v in enumerate(vertices):
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"vertices[{i}] must be a torch tensor, got {type(v).__name__}")
        if v.ndim != 2 or v.shape[1] != 3:
            raise ValueError(f"vertices[{i}] must have shape (N, 3), got {tuple(v.shape)}")
        if v.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"vertices[{i}] must be float32 or float64, got {v.dtype}")
        if v.dtype != dt:
            raise TypeError(f"all vertex tensors must share one dtype; vertices[{i}] is {v.dtype}, vertices[0] is {dt}")
        if not v.is_contiguous():
            raise ValueError(f"vertices[{i}] is not contiguous; pass vertices[{i}].contiguous()")
