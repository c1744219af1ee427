"""torch autograd Function for the path-length rasterizer.

The forward pass runs :func:`taichi_xray.rasterize` and keeps its K-slot
buffers (face id per slot, per pixel); the backward pass is the hand-written
kernel :func:`taichi_xray.kernels.raster.path_length_backward`:
``dC/dv_i = sum over slots of dC/dL * b_i * n / |n . d|`` (the paper's
``dC/dz = dC/dL * sign`` pushed through the exact ray-plane depth; ``b_i``
are the barycentric coordinates of the hit point, ``n`` the face normal and
``d`` the unit ray). Taichi autodiff is not used here: the forward kernel
hands out slots with an atomic counter, which autodiff cannot replay.

Only the depths are differentiated: which faces cover a pixel is piecewise
constant in the vertices, so moving a silhouette edge across a pixel centre
is not seen by the gradient. For a smooth closed mesh the path length goes to
0 continuously at the silhouette, so the image is continuous there, but its
gradient grows like 1/|n . d| (as the true chord's does, L = 2 sqrt(R^2 - b^2)).
Pixels flagged by the unbalanced-pixel fallback or by K overflow get exactly
zero gradient.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import taichi as ti
import torch

from .. import runtime
from ..camera import Camera
from ..kernels import raster as kr
from ..rasterize import _camera_tensors, rasterize

__all__ = ["path_lengths", "PathLengthFunction"]

_REAL = {torch.float32: ti.f32, torch.float64: ti.f64}


@dataclass(frozen=True)
class _Spec:
    faces: tuple
    camera: Camera
    K: int | None
    keep_slots: bool
    deterministic: bool = False


class PathLengthFunction(torch.autograd.Function):
    """``L = PathLengthFunction.apply(spec, *vertices)`` -> (P, H, W); see :func:`path_lengths`."""

    @staticmethod
    def forward(ctx, spec: _Spec, *vertices):
        r = rasterize(list(zip(vertices, spec.faces)), spec.camera, K=spec.K, keep_slots=spec.keep_slots,
                      dtype=vertices[0].dtype, deterministic=spec.deterministic)
        ctx.raster = r
        ctx.deterministic = spec.deterministic
        ctx.out_device = vertices[0].device
        return r.L.to(vertices[0].device)

    @staticmethod
    def backward(ctx, grad_L):
        r = ctx.raster
        if r.K == 0:
            raise RuntimeError("path lengths were computed without slots (under no_grad?) and cannot be differentiated")
        dtype = r.vertices.dtype
        device = r.vertices.device
        cam = r.camera
        grad_V = torch.zeros_like(r.vertices)
        g = grad_L.detach().to(device=device, dtype=dtype).contiguous()
        P, minv, src = _camera_tensors(cam, dtype, device)  # cached on the camera: no copy per call
        flags = r.flags.to(torch.int32).contiguous()
        real = _REAL[dtype]
        if ctx.deterministic:
            proj = torch.empty_like(r.vertices)
            kr.project_vertices(r.vertices, P, proj, real)
            grad_F = torch.empty((len(r.faces), 3, 3), dtype=dtype, device=device)
            kr.path_length_backward_faces(r.vertices, r.faces, r.face_mesh, proj, src, minv, flags, g, grad_F, real)
            ptr, corners = _vertex_corners(r.faces, len(r.vertices))
            kr.gather_vertex_grad(ptr, corners, grad_F, grad_V)
        else:
            kr.path_length_backward(r.vertices, r.faces, r.face_mesh, src, minv, r.count, r.slot_face, flags, g,
                                    grad_V, real)
        off = r.vertex_offsets
        grads = [grad_V[off[p]:off[p + 1]].to(ctx.out_device) for p in range(len(off) - 1)]
        return (None, *grads)


def _vertex_corners(F: torch.Tensor, n_vertices: int):
    """CSR of face corners grouped by vertex, in a fixed (stable-sorted) order."""
    flat = F.reshape(-1).long()
    corners = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=n_vertices)
    ptr = torch.zeros(n_vertices + 1, dtype=torch.int64, device=F.device)
    ptr[1:] = torch.cumsum(counts, 0)
    return ptr.to(torch.int32).contiguous(), corners.to(torch.int32).contiguous()


def _check_vertices(vertices: Sequence[torch.Tensor]) -> None:
    if len(vertices) == 0:
        raise ValueError("no vertex tensors given")
    dt = vertices[0].dtype
    for i, v in enumerate(vertices):
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"vertices[{i}] must be a torch tensor, got {type(v).__name__}")
        if v.ndim != 2 or v.shape[1] != 3:
            raise ValueError(f"vertices[{i}] must have shape (N, 3), got {tuple(v.shape)}")
        if v.dtype not in _REAL:
            raise TypeError(f"vertices[{i}] must be float32 or float64, got {v.dtype}")
        if v.dtype != dt:
            raise TypeError(f"all vertex tensors must share one dtype; vertices[{i}] is {v.dtype}, vertices[0] is {dt}")
        if not v.is_contiguous():
            raise ValueError(f"vertices[{i}] is not contiguous; pass vertices[{i}].contiguous()")


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
    """
    if isinstance(vertices, torch.Tensor):
        vertices = [vertices]
        faces = [faces]
    vertices = list(vertices)
    faces = tuple(faces)
    if len(faces) != len(vertices):
        raise ValueError(f"{len(vertices)} vertex tensors but {len(faces)} face arrays")
    _check_vertices(vertices)
    runtime.ensure_init()
    need_grad = torch.is_grad_enabled() and any(v.requires_grad for v in vertices)
    spec = _Spec(faces, camera, K, keep_slots=need_grad, deterministic=deterministic)
    return PathLengthFunction.apply(spec, *vertices)
