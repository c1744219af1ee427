"""Differentiable projection of a CT volume: per-pixel line integrals of basis-material weights.

``VolumeProjector(volume, cameras)(pose, values=..., mesh=...)`` returns ``L`` (V, B, H, W)
(torch, on the kernels' device): for view v, basis material m and pixel (r, c),
``L = int c_m ds`` in mm along the pixel's ray ("mm of basis material m at its reference
density", see :mod:`taichi_xray.physics.hu`), which Beer-Lambert multiplies by
``mu_m,ref(E)`` like a mesh material's path length.

Differentiable with respect to

* the volume's rigid pose ``(rotation vector (3,) rad, translation (3,) mm)`` about a centre
  (default the volume's centre): ``v' = R(omega) (v - centre) + centre + t``, on top of the
  volume's own affine (which already holds any static ``transform``); one pose for all
  views (6,) or one per view (V, 6);
* the voxel values (HU ``values`` through the HU conversion, or the basis weights
  ``densities`` directly);
* the depths of the mesh slots that cut the volume (``MeshSlots.slot_depth``).

The kernels (:mod:`taichi_xray.kernels.volume`) work in voxel-index space: per view the
ray of pixel (c, r) is ``p(lam) = o + lam G (c, r, 1)`` with ``o = A^-1 (R^T (s - centre - t)
+ centre)`` and ``G = A^-1 R^T M_inv`` (A the volume's affine, s the source, M_inv the
camera's); torch forms ``o`` and ``G`` from the pose, so the pose gradient is torch's chain
rule on top of the kernel's dL/do, dL/dG.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import taichi as ti
import torch
from torch.autograd.function import once_differentiable

from .. import runtime
from ..camera import Camera
from ..kernels import volume as kv
from ..physics.hu import HUConversion, get_hu_conversion
from .volume import Volume

__all__ = ["VolumeProjector", "MeshSlots", "project_volume", "rotvec_to_matrix", "METHODS"]

METHODS = {"siddon": kv.SIDDON, "trilinear": kv.TRILINEAR}


@dataclass
class MeshSlots:
    """The rasterizer's K-slot buffers of the meshes that may cut the volume (one per view).

    count : (V, H, W) int32, faces covering each pixel (slots beyond K are not stored).
    slot_face : (V, H, W, K) int32, face id of each of the first min(count, K) slots.
    slot_depth : (V, H, W, K) float, signed distance from the source along the pixel's ray, mm:
        ``+t`` where the ray leaves a mesh, ``-t`` where it enters. May require grad.
    face_obj : (F,) int32, object of every face.
    excl_obj : (P,) int32 (or bool), nonzero = that object replaces the volume's material.
    """

    count: object
    slot_face: object
    slot_depth: object
    face_obj: object
    excl_obj: object


def rotvec_to_matrix(omega: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) of rotation vectors (..., 3) (rad), differentiable
    (matrix exponential of the skew matrix)."""
    z = torch.zeros_like(omega[..., 0])
    K = torch.stack([torch.stack([z, -omega[..., 2], omega[..., 1]], -1),
                     torch.stack([omega[..., 2], z, -omega[..., 0]], -1),
                     torch.stack([-omega[..., 1], omega[..., 0], z], -1)], -2)
    return torch.linalg.matrix_exp(K)


def _cameras(cameras) -> list[Camera]:
    if isinstance(cameras, Camera):
        cams = [cameras]
    else:
        cams = list(cameras)
    if not cams:
        raise ValueError("no cameras given")
    for i, c in enumerate(cams):
        if not isinstance(c, Camera):
            raise TypeError(f"cameras[{i}] must be a taichi_xray Camera, got {type(c).__name__} "
                            "(build one with Camera.from_projection_matrix(P, width, height))")
    if len({(c.width, c.height) for c in cams}) != 1:
        raise ValueError(f"all cameras must have one detector size, got {sorted({(c.width, c.height) for c in cams})}")
    return cams


def _as_tensor(name, x, dtype, device, shape=None):
    if isinstance(x, torch.Tensor):
        t = x
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be an array") from exc
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    return t.to(device=device, dtype=dtype).contiguous()


class _ProjectFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dens, o, G, slot_depth, cfg):
        V = o.shape[0]
        geo = torch.cat([o, G.reshape(V, 9), cfg["minv"]], 1).contiguous()
        H, W = cfg["size"]
        B = dens.shape[3]
        out = torch.empty((V, B, H, W), dtype=dens.dtype, device=dens.device)
        sd = cfg["dummy_sd"] if slot_depth is None else slot_depth
        runtime.ensure_init()
        n0, n1, n2 = (int(x) for x in dens.shape[:3])
        kv.project_forward(dens.detach().reshape(-1), geo.detach(), cfg["count"], cfg["slot_face"], sd.detach(),
                           cfg["face_obj"], cfg["excl_obj"], out, cfg["method"], cfg["step"], cfg["max_samples"],
                           cfg["use_mesh"], n0, n1, n2, B, cfg["real"])
        ctx.save_for_backward(dens, geo, slot_depth)
        ctx.cfg = cfg
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, gout):
        dens, geo, slot_depth = ctx.saved_tensors
        cfg = ctx.cfg
        want_vol = bool(ctx.needs_input_grad[0])
        want_pose = bool(ctx.needs_input_grad[1] or ctx.needs_input_grad[2])
        want_sd = bool(ctx.needs_input_grad[3]) and slot_depth is not None
        if not (want_vol or want_pose or want_sd):
            return None, None, None, None, None
        V, B, H, W = gout.shape
        dt, dev = dens.dtype, dens.device
        gpose = torch.zeros((V, H, W, 6) if want_pose else (1, 1, 1, 6), dtype=dt, device=dev)
        gvol = torch.zeros_like(dens) if want_vol else torch.zeros((1, 1, 1, B), dtype=dt, device=dev)
        sd = cfg["dummy_sd"] if slot_depth is None else slot_depth
        gsd = torch.zeros_like(sd) if want_sd else torch.zeros((1, 1, 1, 1), dtype=dt, device=dev)
        n0, n1, n2 = (int(x) for x in dens.shape[:3])
        kv.project_backward(dens.detach().reshape(-1), geo, cfg["count"], cfg["slot_face"], sd.detach(),
                            cfg["face_obj"], cfg["excl_obj"], gout.to(dt).contiguous(), gpose, gvol.view(-1), gsd,
                            cfg["method"], cfg["step"], cfg["max_samples"], cfg["use_mesh"], int(want_pose),
                            int(want_vol), int(want_sd), n0, n1, n2, B, cfg["real"])
        g_o = g_G = None
        if want_pose:
            g_o = gpose[..., :3].sum(dim=(1, 2))
            q = cfg["pix"]  # (H, W, 3): (c, r, 1)
            g_G = torch.einsum("vhwa,hwb->vab", gpose[..., 3:], q)
        return (gvol if want_vol else None), g_o, g_G, (gsd if want_sd else None), None


class VolumeProjector:
    """Line integrals of a :class:`Volume`'s basis-material weights for a stack of cameras.

    Parameters
    ----------
    volume : :class:`~taichi_xray.objects.volume.Volume`
    cameras : a Camera or a sequence of V cameras of one detector size (H, W).
    hu_conversion : name, dict or :class:`~taichi_xray.physics.hu.HUConversion` (default
        ``"air_water_bone"``); ``self.materials`` are the B basis materials.
    method : ``"siddon"`` (exact for the voxel grid) or ``"trilinear"`` (trilinear field,
        midpoint rule with steps of at most ``step_mm``).
    step_mm : trilinear step (default half the smallest voxel size).
    dtype : torch.float32 or torch.float64: the precision of the kernels and of the output.

    The basis weights are computed once and kept on the kernels' device
    (:meth:`Volume.densities`); camera geometry is prepared once per projector.
    """

    def __init__(self, volume: Volume, cameras, *, hu_conversion=None, method: str = "siddon",
                 step_mm: float | None = None, dtype=torch.float32):
        if not isinstance(volume, Volume):
            raise TypeError(f"volume must be a taichi_xray Volume, got {type(volume).__name__}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        runtime.ensure_init()
        self.volume = volume
        self.cameras = _cameras(cameras)
        self.conversion: HUConversion = get_hu_conversion(hu_conversion)
        self.materials = self.conversion.materials
        self.method = method
        self.dtype = dtype
        if int(np.prod(volume.shape)) * self.conversion.B >= 2 ** 31:
            raise ValueError(f"volume {volume.shape} x {self.conversion.B} basis materials has >= 2^31 entries: "
                             "the kernels index it with 32-bit integers; crop or resample it")
        self.device = torch.device(runtime.torch_device())
        sp = float(volume.spacing.min())
        self.step_mm = 0.5 * sp if step_mm is None else float(step_mm)
        if not (math.isfinite(self.step_mm) and self.step_mm > 0):
            raise ValueError(f"step_mm must be a positive number of mm, got {step_mm!r}")
        diag = float(np.linalg.norm(np.ptp(volume.corners, axis=0)))
        self.max_samples = int(math.ceil(diag / self.step_mm)) + 2
        self.height, self.width = self.cameras[0].height, self.cameras[0].width
        V = len(self.cameras)
        f64 = dict(dtype=torch.float64, device=self.device)
        self._src = torch.as_tensor(np.stack([c.source for c in self.cameras]), **f64)
        minv = np.stack([c.M_inv for c in self.cameras])
        self._minv64 = torch.as_tensor(minv, **f64)
        self._minv = self._minv64.reshape(V, 9).to(dtype).contiguous()
        A = np.array(volume.affine)
        self._Ainv = torch.as_tensor(np.linalg.inv(A[:3, :3]), **f64)
        self._a = torch.as_tensor(A[:3, 3], **f64)
        self._centre = torch.as_tensor(volume.centre, **f64)
        v, u = np.mgrid[0:self.height, 0:self.width].astype(np.float64)
        self._pix = torch.as_tensor(np.stack([u, v, np.ones_like(u)], -1), dtype=dtype, device=self.device)
        i32 = dict(dtype=torch.int32, device=self.device)
        self._dummy = dict(count=torch.zeros((1, 1, 1), **i32), slot_face=torch.zeros((1, 1, 1, 1), **i32),
                           face_obj=torch.zeros((1,), **i32), excl_obj=torch.zeros((1,), **i32),
                           dummy_sd=torch.zeros((1, 1, 1, 1), dtype=dtype, device=self.device))
        self._geo0 = None

    @classmethod
    def from_matrices(cls, volume: Volume, P, width: int, height: int, **kw) -> "VolumeProjector":
        """Projector for a stack of projection matrices ``P`` (V, 3, 4) or (3, 4) (world mm -> pixels,
        OpenCV convention; any scale and sign: each is normalised so that the volume's centre is in
        front, see :meth:`Camera.from_projection_matrix`)."""
        Ps = np.asarray(P.detach().cpu() if isinstance(P, torch.Tensor) else P, dtype=np.float64)
        if Ps.shape == (3, 4):
            Ps = Ps[None]
        if Ps.ndim != 3 or Ps.shape[1:] != (3, 4):
            raise ValueError(f"P must have shape (V, 3, 4) or (3, 4), got {Ps.shape}")
        cams = [Camera.from_projection_matrix(p, width, height, front=volume.centre) for p in Ps]
        return cls(volume, cams, **kw)

    @property
    def B(self) -> int:
        return self.conversion.B

    def __repr__(self) -> str:
        return (f"VolumeProjector({self.volume!r}, {len(self.cameras)} view(s) {self.width}x{self.height}, "
                f"{self.method}, {self.conversion.name}, {str(self.dtype).replace('torch.', '')})")

    # ------------------------------------------------------------------ geometry
    def rays(self, pose=None, centre=None):
        """(o (V, 3), G (V, 3, 3)) in the kernels' dtype, differentiable in ``pose``."""
        if pose is None and centre is None:
            if self._geo0 is None:
                o, G = self._rays64(None, None)
                self._geo0 = (o.to(self.dtype).contiguous(), G.to(self.dtype).contiguous())
            return self._geo0
        o, G = self._rays64(pose, centre)
        return o.to(self.dtype), G.to(self.dtype)

    def _rays64(self, pose, centre):
        V = len(self.cameras)
        s = self._src
        if pose is None:
            R = torch.eye(3, dtype=torch.float64, device=self.device).expand(V, 3, 3)
            t = torch.zeros((V, 3), dtype=torch.float64, device=self.device)
        else:
            p = pose if isinstance(pose, torch.Tensor) else torch.as_tensor(np.asarray(pose, dtype=np.float64))
            p = p.to(device=self.device, dtype=torch.float64)
            if p.shape == (6,):
                p = p.expand(V, 6)
            if p.shape != (V, 6):
                raise ValueError(f"pose must have shape (6,) or ({V}, 6): rotation vector (rad) and translation "
                                 f"(mm), got {tuple(p.shape)}")
            if not bool(torch.isfinite(p).all()):
                raise ValueError("pose contains NaN or inf")
            R = rotvec_to_matrix(p[:, :3])
            t = p[:, 3:]
        c = self._centre if centre is None else _as_tensor("centre", centre, torch.float64, self.device, (3,))
        Rt = R.transpose(1, 2)
        y = torch.einsum("vab,vb->va", Rt, s - c - t) + c
        o = (y - self._a) @ self._Ainv.T
        G = torch.einsum("ab,vbc,vcd->vad", self._Ainv, Rt, self._minv64)
        return o, G

    # ------------------------------------------------------------------ projection
    def densities_from(self, values=None, densities=None):
        """Basis weights (D0, D1, D2, B) in the kernels' dtype: cached from the volume, or from HU
        ``values`` (torch, differentiable) or ``densities`` given by the caller."""
        shp = self.volume.shape
        if values is not None and densities is not None:
            raise ValueError("give values (HU) or densities, not both")
        if densities is not None:
            d = densities if isinstance(densities, torch.Tensor) else torch.as_tensor(np.asarray(densities))
            if tuple(d.shape) != (*shp, self.B):
                raise ValueError(f"densities must have shape {(*shp, self.B)}, got {tuple(d.shape)}")
            return d.to(device=self.device, dtype=self.dtype).contiguous()
        if values is not None:
            h = values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values, dtype=np.float64))
            if tuple(h.shape) != shp:
                raise ValueError(f"values must have the volume's shape {shp}, got {tuple(h.shape)}")
            if not h.dtype.is_floating_point:
                h = h.to(torch.float64)
            if not bool(torch.isfinite(h.detach()).all()):
                raise ValueError("values contain NaN or inf")
            return self.conversion.torch(h.to(device=self.device, dtype=self.dtype)).contiguous()
        return self.volume.densities(self.conversion, self.dtype, self.device)

    def _mesh_cfg(self, mesh: MeshSlots | None):
        if mesh is None:
            return dict(count=self._dummy["count"], slot_face=self._dummy["slot_face"],
                        face_obj=self._dummy["face_obj"], excl_obj=self._dummy["excl_obj"], use_mesh=0), None
        if not isinstance(mesh, MeshSlots):
            raise TypeError(f"mesh must be a MeshSlots, got {type(mesh).__name__}")
        V, H, W = len(self.cameras), self.height, self.width
        i32 = dict(dtype=torch.int32, device=self.device)
        count = _as_tensor("mesh.count", mesh.count, torch.int32, self.device, (V, H, W))
        sf = mesh.slot_face if isinstance(mesh.slot_face, torch.Tensor) else torch.as_tensor(np.asarray(mesh.slot_face))
        if sf.ndim != 4 or tuple(sf.shape[:3]) != (V, H, W) or sf.shape[3] < 1:
            raise ValueError(f"mesh.slot_face must have shape ({V}, {H}, {W}, K), got {tuple(sf.shape)}")
        K = sf.shape[3]
        sf = sf.to(**i32).contiguous()
        sd = mesh.slot_depth if isinstance(mesh.slot_depth, torch.Tensor) else torch.as_tensor(
            np.asarray(mesh.slot_depth, dtype=np.float64))
        if tuple(sd.shape) != (V, H, W, K):
            raise ValueError(f"mesh.slot_depth must have shape {(V, H, W, K)}, got {tuple(sd.shape)}")
        sd = sd.to(device=self.device, dtype=self.dtype).contiguous()
        fo = _as_tensor("mesh.face_obj", mesh.face_obj, torch.int32, self.device)
        ex = _as_tensor("mesh.excl_obj", mesh.excl_obj, torch.int32, self.device)
        if fo.ndim != 1 or ex.ndim != 1 or fo.numel() == 0 or ex.numel() == 0:
            raise ValueError("mesh.face_obj and mesh.excl_obj must be non-empty 1-D arrays")
        n = torch.clamp(count, max=K)
        used = torch.arange(K, device=self.device) < n[..., None]
        if bool(used.any()):
            faces = sf[used]
            if int(faces.min()) < 0 or int(faces.max()) >= fo.numel():
                raise ValueError(f"mesh.slot_face holds face ids outside [0, {fo.numel()}) (face_obj's length)")
            if int(fo.min()) < 0 or int(fo.max()) >= ex.numel():
                raise ValueError(f"mesh.face_obj holds object ids outside [0, {ex.numel()}) (excl_obj's length)")
        return dict(count=count, slot_face=sf, face_obj=fo, excl_obj=ex, use_mesh=1), sd

    def __call__(self, pose=None, *, centre=None, values=None, densities=None, mesh: MeshSlots | None = None):
        """Line integrals (V, B, H, W) torch in mm; see the class and module docstrings.

        pose : None, or (6,) / (V, 6) tensor ``(rotation vector rad, translation mm)`` about ``centre``
            (default the volume's centre, world mm). values : HU (D0, D1, D2) tensor (e.g. requiring
            grad). densities : basis weights (D0, D1, D2, B). mesh : :class:`MeshSlots`.
        """
        dens = self.densities_from(values, densities)
        o, G = self.rays(pose, centre)
        mcfg, sd = self._mesh_cfg(mesh)
        real = ti.f64 if self.dtype == torch.float64 else ti.f32
        cfg = dict(minv=self._minv, size=(self.height, self.width), method=METHODS[self.method],
                   step=float(self.step_mm), max_samples=self.max_samples, real=real, pix=self._pix,
                   dummy_sd=self._dummy["dummy_sd"], **mcfg)
        return _ProjectFn.apply(dens, o, G, sd, cfg)

    def numpy(self, *args, **kw) -> np.ndarray:
        """:meth:`__call__` without gradients, as a numpy array (V, B, H, W)."""
        with torch.no_grad():
            return self(*args, **kw).cpu().numpy()


def project_volume(volume: Volume, cameras, pose=None, *, hu_conversion=None, method: str = "siddon",
                   step_mm: float | None = None, dtype=torch.float32, values=None, densities=None,
                   mesh: MeshSlots | None = None) -> torch.Tensor:
    """One-shot :class:`VolumeProjector` call (build a projector to reuse its geometry)."""
    proj = VolumeProjector(volume, cameras, hu_conversion=hu_conversion, method=method, step_mm=step_mm,
                           dtype=dtype)
    return proj(pose, values=values, densities=densities, mesh=mesh)
