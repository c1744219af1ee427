"""Path-length rasterization: meshes + cameras -> channel images (path lengths).

:class:`Rasterizer` keeps the faces, their channel weights, the cameras and the
work buffers on the kernels' device and runs the Taichi kernels of
:mod:`taichi_xray.kernels.raster` in one launch per call (all views and poses
together). It is what the :class:`~taichi_xray.pipeline.Pipeline`, the torch
bridge and the viewer use. :func:`rasterize` (per-object path lengths for one
camera, returned as a :class:`Raster`) and :func:`path_length` (numpy) are the
short entry points.

Behaviour at the edges of the method:

* Orientation: every mesh is checked by its signed volume; a closed mesh whose
  faces point inward is reoriented with a :class:`~taichi_xray.mesh.MeshWarning`
  (whatever form it came in: Mesh, (vertices, faces) arrays, torch tensors).
* K overflow: with ``K=None`` (default) the slot capacity grows to the largest
  number of faces covering one pixel (the kernel reruns once) and never shrinks
  within a :class:`Rasterizer`, so nothing is dropped. With a fixed ``K`` the
  path lengths stay exact (they are accumulated separately) but slots beyond K
  are dropped; this warns (:class:`KOverflowWarning`) with the number of pixels
  affected and those pixels are flagged (no gradient).
* Open meshes: a pixel whose entries and exits through an open mesh do not
  balance takes the values of the nearest balanced pixel (within ``fix_radius``)
  and is flagged; the backward pass gives it zero gradient; a
  :class:`~taichi_xray.mesh.MeshWarning` gives their number.
* Faces entirely behind the source (``w <= 0`` at all three vertices) are
  culled; an object with *every* face behind the source raises
  :class:`GeometryError` naming it (an all-zero image is never returned in
  silence). A face crossing the plane through the source parallel to the
  detector cannot be projected: :class:`GeometryError` names its object.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import taichi as ti
import torch

from . import runtime
from .camera import Camera
from .kernels import raster as kr
from .kernels.launch import LaunchCache
from .mesh import Mesh, MeshWarning

__all__ = ["Raster", "Rasterizer", "RasterState", "rasterize", "path_length", "GeometryError",
           "KOverflowWarning", "pack_cameras", "prepare_mesh"]


class GeometryError(ValueError):
    """The scene cannot be projected (a mesh crosses the source plane, or lies behind the source)."""


class KOverflowWarning(RuntimeWarning):
    """More faces cover a pixel than the fixed slot capacity K."""


_REAL = {torch.float32: ti.f32, torch.float64: ti.f64}
# above this many vertices x instances, project every vertex once in a first loop (a vertex is
# shared by ~6 faces) instead of projecting each face's corners (one parallel loop less)
PREPROJECT_VERTICES = 20000
# from this many faces on, faces whose order scatters their vertex gathers over the whole mesh are
# traversed sorted by their lowest vertex index (below it the vertices stay in the cache anyway)
REORDER_FACES = 65536
# scenes (lists of meshes) whose packing and face tables rasterize() keeps per first Mesh
PACK_CACHE_SIZE = 4


def _face_order(F: np.ndarray):
    """(faces (M, 3) int32, ids (M,) int32): the rows of ``F`` in the order the forward kernel
    visits them, and the face id of each row; ``None`` when ``F`` is kept as it is.

    A face reads its three vertices (projected); when consecutive faces lie far apart in the
    vertex array (an icosphere built by splitting all faces at once puts the children of the 20
    icosahedron faces side by side: measured 1.5-2x slower on 1.3M faces), every read misses the
    cache. Rows sorted by their lowest vertex index (stable) share vertices with their
    neighbours. Only the order of the rows changes, never a row itself (the edge tie rules read
    the vertex indices), so every face covers exactly the same pixels.
    """
    M = len(F)
    if M < REORDER_FACES:
        return None
    key = np.minimum(np.minimum(F[:, 0], F[:, 1]), F[:, 2])
    if np.abs(np.diff(key.astype(np.int64))).mean() <= 64:  # already local (e.g. marching cubes)
        return None
    order = np.argsort(key, kind="stable").astype(np.int32)
    return np.ascontiguousarray(np.take(F, order, axis=0)), order


class _FaceTables:
    """What a :class:`Rasterizer` derives from its faces and their objects alone, on its device.

    F (M, 3) int32 faces; F_run / fid: the rows in traversal order and the face id of each
    (``F_run is F`` when the order is kept); face_obj (M,) int32; P, faces_per_object, F_max.
    :func:`rasterize` keeps one per set of :class:`Mesh` objects (their arrays are read-only),
    so that a fresh call on meshes already seen does no per-face work on the host; the tensors
    are shared by the rasterizers built from it and must not be written to.
    """

    def __init__(self, faces, face_obj, device):
        Fnp = np.ascontiguousarray(faces.detach().cpu().numpy() if isinstance(faces, torch.Tensor) else faces, np.int32)
        self.F = torch.as_tensor(Fnp, device=device).contiguous()
        self.F_max = int(Fnp.max()) if len(Fnp) else -1
        fo = _face_order(Fnp)
        if fo is None:  # traversal order = face order
            self.F_run = self.F
            self.fid = torch.arange(len(Fnp), dtype=torch.int32, device=device)
            self.order = None
        else:
            self.F_run = torch.as_tensor(fo[0], device=device).contiguous()
            self.fid = torch.as_tensor(fo[1], device=device).contiguous()
            self.order = self.fid
        fobj = np.ascontiguousarray(face_obj.detach().cpu().numpy() if isinstance(face_obj, torch.Tensor)
                                    else face_obj, np.int32)
        self.face_obj = torch.as_tensor(fobj, device=device).contiguous()
        self.P = int(fobj.max()) + 1 if len(fobj) else 0
        self.faces_per_object = np.bincount(fobj, minlength=self.P)
        self._cache: dict = {}

    def run_order(self, t: torch.Tensor) -> torch.Tensor:
        """Rows of a per-face table (M, ...) in traversal order (the kernel reads them sequentially)."""
        return t if self.order is None else t.index_select(0, self.order).contiguous()

    def balance(self, objs: tuple, dummy) -> torch.Tensor:
        """(M,) int32 balance index of every face in traversal order (-1: untracked); a dummy when no
        object is tracked (the kernel does not read it then)."""
        if not objs:
            return dummy
        key = ("bal", objs)
        if key not in self._cache:
            fb = torch.full((self.P,), -1, dtype=torch.int32, device=self.F.device)
            for b, o in enumerate(objs):
                fb[o] = b
            self._cache[key] = self.run_order(fb.index_select(0, self.face_obj)).contiguous()
        return self._cache[key]

    def object_weights(self, dtype):
        """Per-object path-length tables (channel = object, weight 1): (face_ch, face_w, run-order copies)."""
        key = ("objw", dtype)
        if key not in self._cache:
            ch = self.face_obj[:, None].contiguous()
            w = torch.ones((len(ch), 1), dtype=dtype, device=ch.device)  # the same in any order
            self._cache[key] = (ch, w, ch if self.P == 1 else self.run_order(ch), w)
        return self._cache[key]


# ----------------------------------------------------------------------------------------
# input checks (once per mesh)
# ----------------------------------------------------------------------------------------
def prepare_mesh(m, name: str, stacklevel: int = 3):
    """Validate one mesh and orient it outward: returns (vertices (N, 3) float64, faces (M, 3)
    int32, watertight: bool).

    ``m`` is a :class:`Mesh` or a ``(vertices, faces)`` pair of numpy arrays or torch
    tensors. A closed mesh with negative signed volume (inward normals) is reoriented
    with a :class:`MeshWarning` naming it; a mesh that is not watertight warns (its
    unbalanced pixels are filled from neighbours and flagged). Results for a Mesh are
    cached on it.
    """
    if isinstance(m, Mesh):
        cache = m.__dict__.setdefault("_tx_prepared", {})
        if "v" not in cache:
            rep = m.check()
            src = m
            if rep.watertight and not rep.outward:
                src = m.oriented()  # warns, keeps cavities
            elif not rep.watertight:
                warnings.warn(f"{m!r} is not watertight ({'; '.join(rep.problems())}); unbalanced pixels take a "
                              "neighbour's value and are flagged", MeshWarning, stacklevel=stacklevel)
            cache["v"] = (np.asarray(src.vertices, np.float64), np.ascontiguousarray(src.faces, np.int32),
                          rep.watertight)
        return cache["v"]
    try:
        V, F = m
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a Mesh or a (vertices, faces) pair") from None
    V = _np(V, name, "vertices")
    F = _np(F, name, "faces")
    if V.ndim != 2 or V.shape[1] != 3:
        raise ValueError(f"{name}: vertices must have shape (N, 3), got {V.shape}")
    if not np.issubdtype(V.dtype, np.floating):
        raise TypeError(f"{name}: vertices must be floating point, got {V.dtype}")
    if not np.isfinite(V).all():
        raise ValueError(f"{name}: vertices contain NaN or inf")
    if F.ndim != 2 or F.shape[1] != 3 or not np.issubdtype(F.dtype, np.integer):
        raise ValueError(f"{name}: faces must be an integer array of shape (M, 3), got {F.dtype} {F.shape}")
    if len(F) == 0:
        raise ValueError(f"{name}: no faces")
    if F.min() < 0 or F.max() >= len(V):
        raise ValueError(f"{name}: face indices out of range [0, {len(V) - 1}]")
    mesh = Mesh(V, F, name)
    rep = mesh.check()
    F = np.ascontiguousarray(F, np.int32)
    if rep.watertight and getattr(rep, "flat", False):
        warnings.warn(f"{name}: {'; '.join(rep.problems())}: it adds nothing to the image", MeshWarning,
                      stacklevel=stacklevel)
    elif rep.watertight and not rep.outward:
        if rep.consistent and rep.volume < 0:  # signed volume about the mesh's own centroid
            F = np.ascontiguousarray(F[:, ::-1])
            warnings.warn(f"{name}: faces point inward (negative signed volume); reversed them to point outward",
                          MeshWarning, stacklevel=stacklevel)
        else:
            F = np.ascontiguousarray(mesh.oriented().faces, np.int32)  # warns
    elif not rep.watertight:
        warnings.warn(f"{name} is not watertight ({'; '.join(rep.problems())}); unbalanced pixels take a "
                      "neighbour's value and are flagged", MeshWarning, stacklevel=stacklevel)
    return np.asarray(V, np.float64), F, rep.watertight


def _np(a, name, what):
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    try:
        return np.asarray(a)
    except Exception:
        raise TypeError(f"{name}: {what} must be an array") from None


def pack_cameras(cams: Sequence[Camera], dtype, device) -> torch.Tensor:
    """(n, CAM_WIDTH) rows: P (12), M^-1 (9), source (3), sign(det M); cached per camera."""
    rows = []
    for c in cams:
        key = "_tx_row"
        if key not in c._cache:
            M = c.P[:, :3]
            c._cache[key] = np.concatenate([c.P.reshape(-1), c.M_inv.reshape(-1), c.source,
                                            [np.sign(np.linalg.det(M))]])
        rows.append(c._cache[key])
    return torch.as_tensor(np.stack(rows), dtype=dtype, device=device).contiguous()


# ----------------------------------------------------------------------------------------
# the rasterizer
# ----------------------------------------------------------------------------------------
@dataclass
class RasterState:
    """One forward pass of a :class:`Rasterizer` (tensors on the kernels' device).

    L : (I, C, H, W) channel images (mm, or mm x weight) per instance.
    flags : (I, H, W) bool, True where a pixel was filled from a neighbour (open mesh)
        or its slots overflowed; such pixels get no gradient.
    count : (I, H, W) int32 faces covering each pixel (when slots were kept).
    slot_face, slot_depth : (I, H, W, K) face id and signed depth (mm) of each slot.
    n_fixed : (I, B) numpy, pixels filled from neighbours per instance and open mesh.
    K : slot capacity (0 without slots). V : (S, N, 3) the vertices rasterized.
    ref : (I, 4) the reference point and depth the channel sums were measured from (see the kernel).
    """

    L: torch.Tensor
    flags: torch.Tensor
    count: torch.Tensor | None
    slot_face: torch.Tensor | None
    slot_depth: torch.Tensor | None
    n_fixed: np.ndarray
    K: int
    V: torch.Tensor
    ref: torch.Tensor | None = None


class Rasterizer:
    """Faces, channel weights, cameras and buffers kept on the kernels' device.

    Parameters
    ----------
    faces : (M, 3) int array of global vertex indices (all objects concatenated).
    face_obj : (M,) int object of every face (0 .. P-1).
    face_ch, face_w : (M, J) channel index (-1 = none) and weight of each face's terms; both None:
        per-object path lengths (channel = object, weight 1; n_channels must be the number of objects).
    n_channels : C, the number of channel images.
    cameras : cameras of one detector size.
    instances : (I, 2) int (vertex set, camera) pairs; default: vertex set 0 in every camera.
    open_objects : object indices whose meshes are not watertight (their balance is tracked).
    names : P object names (messages).
    dtype : torch.float32 or torch.float64, precision of the kernels and the outputs.
    K : slot capacity; None grows it as needed (never shrinks).
    """

    def __init__(self, faces, face_obj, face_ch, face_w, n_channels: int, cameras, instances=None,
                 open_objects=(), names=None, dtype=torch.float32, K: int | None = None,
                 deterministic: bool = False, fix_radius: int = 4, _tables: _FaceTables | None = None):
        runtime.ensure_init()
        if dtype not in _REAL:
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.device = runtime.torch_device()
        self.dtype = dtype
        self.real = _REAL[dtype]
        ft = _tables if _tables is not None else _FaceTables(faces, face_obj, self.device)
        self._ft = ft
        self.F = ft.F
        self._F_max = ft.F_max
        self._F_run = ft.F_run
        self._fid = ft.fid
        self.face_obj = ft.face_obj
        self.P = ft.P
        self.names = list(names) if names is not None else [f"object {p}" for p in range(self.P)]
        self.faces_per_object = ft.faces_per_object
        self.C = int(n_channels)
        self._bufs: dict = {}
        if face_ch is None:  # per-object path lengths (channel = object, weight 1), kept with the faces
            if self.C != self.P:
                raise ValueError("face_ch=None (per-object channels) needs n_channels equal to the number of objects")
            self.face_ch, self.face_w, self._ch_run, self._w_run = ft.object_weights(dtype)
            self.J = 1
        else:
            self.set_weights(face_ch, face_w)
        self.open_objects = sorted(set(int(o) for o in open_objects))
        self._set_balance(self.open_objects)
        self.K_fixed = None if K is None else int(K)
        if self.K_fixed is not None and self.K_fixed < 1:
            raise ValueError(f"K must be a positive integer, got {K}")
        self.K = self.K_fixed or 2  # a closed surface needs 2; grows on the first call that needs more
        self.deterministic = bool(deterministic)
        self.fix_radius = int(fix_radius)
        self._launch = LaunchCache()
        self._gen: dict = {}
        self.linear = None
        self.linear_grads = None
        self.set_cameras(cameras, instances)

    def generation(self, tag: str = "") -> int:
        """How many forward passes have written the buffers of ``tag`` (a state whose
        generation is older has been overwritten)."""
        return self._gen.get(tag, 0)

    # ------------------------------------------------------------------ configuration
    def set_weights(self, face_ch, face_w) -> None:
        ch = torch.as_tensor(np.asarray(face_ch) if not isinstance(face_ch, torch.Tensor) else face_ch)
        w = torch.as_tensor(np.asarray(face_w) if not isinstance(face_w, torch.Tensor) else face_w)
        if ch.ndim != 2 or ch.shape[0] != len(self.F) or tuple(w.shape) != tuple(ch.shape):
            raise ValueError(f"face_ch and face_w must both have shape (M={len(self.F)}, J), got "
                             f"{tuple(ch.shape)} and {tuple(w.shape)}")
        if len(ch) and (int(ch.max()) >= self.C or int(ch.min()) < -1):
            raise ValueError(f"face channels must lie in [-1, {self.C - 1}]")
        self.J = int(ch.shape[1])
        self.face_ch = ch.to(device=self.device, dtype=torch.int32).contiguous()
        self.face_w = w.to(device=self.device, dtype=self.dtype).contiguous()
        # copies in traversal order for the forward kernel (the same tensors when the order is kept)
        self._ch_run = self._ft.run_order(self.face_ch)
        self._w_run = self._ft.run_order(self.face_w)

    def _set_balance(self, objs) -> None:
        self.n_bal = len(objs)
        # (M,) balance index per face in traversal order (read by the forward kernel only)
        self.face_bal = self._ft.balance(tuple(int(o) for o in objs), self._dummy(1, torch.int32))

    def set_cameras(self, cameras, instances=None) -> None:
        cams = [cameras] if isinstance(cameras, Camera) else list(cameras)
        if not cams:
            raise ValueError("no cameras given")
        for c in cams:
            if not isinstance(c, Camera):
                raise TypeError(f"cameras must be taichi_xray.Camera objects, got {type(c).__name__}")
        if len({(c.height, c.width) for c in cams}) != 1:
            raise ValueError("all cameras of one rasterizer must have the same detector size")
        self.cameras = cams
        self.H, self.W = cams[0].height, cams[0].width
        self.cam = pack_cameras(cams, self.dtype, self.device)
        if instances is None:
            instances = [(0, c) for c in range(len(cams))]
        inst = np.asarray(instances, dtype=np.int32).reshape(-1, 2)
        if len(inst) == 0 or inst[:, 1].min() < 0 or inst[:, 1].max() >= len(cams) or inst[:, 0].min() < 0:
            raise ValueError(f"instances must be (vertex set >= 0, camera in [0, {len(cams)})) pairs")
        self.inst_np = inst
        self.inst = torch.as_tensor(inst, device=self.device).contiguous()
        self.S = int(inst[:, 0].max()) + 1

    # ------------------------------------------------------------------ buffers
    def _buf(self, name, shape, dtype, zero=False):
        t = self._bufs.get(name)
        if t is None or tuple(t.shape) != tuple(shape) or t.dtype != dtype:
            t = torch.zeros(shape, dtype=dtype, device=self.device) if zero else \
                torch.empty(shape, dtype=dtype, device=self.device)
            self._bufs[name] = t
        elif zero:
            t.zero_()
        return t

    def _dummy(self, ndim, dtype):
        return self._buf(f"dummy{ndim}{dtype}", (1,) * ndim, dtype)

    # ------------------------------------------------------------------ forward
    def forward(self, V: torch.Tensor, keep_slots: bool = True, check_balance: bool = False,
                fix_unbalanced: bool = True, buffer_tag: str = "") -> RasterState:
        """Rasterize vertex sets V (S, N, 3) (float of the rasterizer's dtype, contiguous, on
        its device) into (I, C, H, W) channel images.

        keep_slots : store (face, signed depth) per covering face (needed by backward and
            the nesting check). check_balance : track entries/exits of every object (not
            only open ones): a closed mesh must give none unbalanced (tests).
        buffer_tag : outputs of calls with different tags do not share storage (a result
            is overwritten by the next call with the same tag).
        """
        if V.ndim != 3 or V.shape[2] != 3 or V.shape[0] < self.S:
            raise ValueError(f"vertices must have shape (S>={self.S}, N, 3), got {tuple(V.shape)}")
        if V.dtype != self.dtype or not V.is_contiguous():
            raise ValueError(f"vertices must be contiguous {self.dtype}")
        if V.shape[1] == 0:
            raise ValueError("vertices must have shape (S, N, 3) with N > 0, got N = 0")
        if self._F_max >= V.shape[1]:
            raise ValueError(f"faces index {self._F_max} but there are {V.shape[1]} vertices")
        I, C, H, W = len(self.inst_np), self.C, self.H, self.W
        self._gen[buffer_tag] = self._gen.get(buffer_tag, 0) + 1
        store = bool(keep_slots or self.deterministic)
        bal_objs = list(range(self.P)) if check_balance else self.open_objects
        if bal_objs != self.open_objects or check_balance != getattr(self, "_bal_all", False):
            self._set_balance(bal_objs)
            self._bal_all = check_balance
        track = self.n_bal > 0
        t = buffer_tag
        status = self._buf("status", (I, kr.N_STATUS, max(self.P, 1)), torch.int32)
        ref = self._buf(t + "ref", (I, 4), self.dtype)  # written by the kernel
        vbox = self._buf("vbox", (V.shape[0], -(-V.shape[1] // kr.BOX_BLOCK), 6), self.dtype)
        balance = self._buf(t + "balance", (I, self.n_bal, H, W), torch.int32) if track else self._dummy(4, torch.int32)
        for attempt in range(2):
            L = self._buf(t + "L", (I, C, H, W), self.dtype)
            L.zero_()
            if store:
                count = self._buf(t + "count", (I, H, W), torch.int32)
                count.zero_()
                sf = self._buf(t + "slot_face", (I, H, W, self.K), torch.int32)
                sd = self._buf(t + "slot_depth", (I, H, W, self.K), self.dtype)
            else:
                count, sf, sd = self._dummy(3, torch.int32), self._dummy(4, torch.int32), self._dummy(4, self.dtype)
            if track:
                balance.zero_()
            pre = V.shape[1] * I >= PREPROJECT_VERTICES
            proj = self._buf("proj", (I, V.shape[1], 4), self.dtype) if pre else self._dummy(3, self.dtype)
            li, fl, xr = self._linear_args(V)
            self._launch(t + "fwd", kr.raster_forward, V, self._F_run, self._fid, self.face_obj, self._ch_run,
                         self._w_run, self.face_bal, self.inst, self.cam, ref, vbox, proj, L, count, sf, sd, balance,
                         status, li, fl, xr, self.J, int(store), int(track), int(pre), int(self.linear is not None),
                         int(self.device == "cpu"), self.real)
            if status.is_cpu:  # read in place
                st = status.numpy()
                need = int(count.amax()) if store else 0
            else:  # one device -> host transfer for all the counters
                parts = [status.reshape(-1)]
                if store:
                    parts.append(count.amax().reshape(1))
                host = torch.cat(parts).cpu().numpy()
                st = host[: status.numel()].reshape(status.shape)
                need = int(host[-1]) if store else 0
            self._check_status(st)
            if not store or need <= self.K or self.K_fixed is not None:
                break
            self.K = need  # grow (never shrinks) and run again
        flags = self._buf(t + "flags", (I, H, W), torch.bool)
        flags.zero_()
        n_fixed = np.zeros((I, max(self.n_bal, 0)), dtype=np.int64)
        if track:
            badb = balance != 0  # (I, B, H, W)
            n_fixed = badb.sum(dim=(2, 3)).cpu().numpy().astype(np.int64)
            if n_fixed.any():
                bad = badb.any(dim=1)
                if fix_unbalanced:
                    fixed = self._buf(t + "L_fixed", (I, C, H, W), self.dtype)
                    self._launch(t + "fill", kr.fill_unbalanced, L, bad.to(torch.uint8).contiguous(), fixed,
                                 self.fix_radius)
                    L = fixed
                flags |= bad
        if self.deterministic:
            if need > self.K:
                raise ValueError(f"deterministic=True needs every crossing in a slot: K={self.K} but {need} faces "
                                 "cover a pixel")
            self._launch(t + "sum", kr.sum_slots_sorted, count, sf, sd, self.face_ch, self.face_w, self.inst, self.cam,
                         ref, L, self.J, self.real)
        if store and need > self.K:
            over = count > self.K
            flags |= over
            warnings.warn(f"K={self.K} slots overflowed on {int(over.sum())} pixels (up to {need} faces cover a "
                          "pixel); path lengths stay exact, but those pixels are flagged and get no gradient. "
                          "Use K=None to grow K.", KOverflowWarning, stacklevel=3)
        if not store:
            count = sf = sd = None
        return RasterState(L, flags, count, sf, sd, n_fixed, self.K if store else 0, V, ref)

    def _check_status(self, st: np.ndarray) -> None:
        strad = st[:, kr.ST_STRADDLE].sum(0)
        if strad.any():
            who = ", ".join(f"'{self.names[p]}' ({int(strad[p])} faces)" for p in np.flatnonzero(strad))
            raise GeometryError(f"faces cross the plane through the X-ray source parallel to the detector: {who}; "
                                "the source must lie outside every object and in front of none of its faces")
        behind = st[:, kr.ST_BEHIND]  # (I, P)
        allb = behind == self.faces_per_object[None, :]
        allb &= self.faces_per_object[None, :] > 0
        if allb.any():
            i, p = np.argwhere(allb)[0]
            view = f" in view {int(self.inst_np[i, 1])}" if len(self.cameras) > 1 else ""
            raise GeometryError(f"object '{self.names[p]}' lies entirely behind the X-ray source{view} (every face "
                                "has w <= 0): check the camera (a projection matrix given with the opposite sign "
                                "sees the scene behind it) and the object's position")

    # ------------------------------------------------------------------ backward
    def backward(self, state: RasterState, grad_L: torch.Tensor, grad_sd: torch.Tensor | None = None,
                 want_w: bool = False, grad_V: torch.Tensor | None = None):
        """Vector-Jacobian product of :meth:`forward`.

        grad_L : (I, C, H, W) dC/dL. grad_sd : optional (I, H, W, K) extra gradient per slot's
        signed depth (e.g. from a volume projector). Returns (grad_V (S, N, 3), grad_w (M, J)
        or None); grad_V accumulates into the given tensor when one is passed.
        """
        if state.K == 0:
            raise RuntimeError("the forward pass kept no slots (keep_slots=False or under no_grad): it cannot be "
                               "differentiated")
        V = state.V
        g = grad_L.detach().to(device=self.device, dtype=self.dtype).contiguous()
        if tuple(g.shape) != tuple(state.L.shape):
            raise ValueError(f"grad_L must have shape {tuple(state.L.shape)}, got {tuple(g.shape)}")
        if grad_V is None:
            grad_V = torch.zeros_like(V)
        flags = state.flags.view(torch.uint8)
        grad_w = torch.zeros_like(self.face_w) if want_w else self._dummy(2, self.dtype)
        if self.deterministic and grad_sd is None:
            I = len(self.inst_np)
            grad_F = self._buf("grad_F", (I, len(self.F), 3, 3), self.dtype)
            gwF = self._buf("grad_wF", (I, len(self.F), self.J), self.dtype) if want_w else self._dummy(3, self.dtype)
            self._launch("bwd_faces", kr.raster_backward_faces, V, self.F, self.face_ch, self.face_w, self.inst,
                         self.cam, state.ref, flags, g, grad_F, gwF, self.J, int(want_w), self.real)
            ptr, corners = self._corners(V.shape[1])
            self._launch("gather", kr.gather_vertex_grad, ptr, corners, self.inst, grad_F, grad_V)
            if want_w:
                grad_w = gwF.sum(0)
        else:
            gsd = grad_sd.detach().to(device=self.device, dtype=self.dtype).contiguous() if grad_sd is not None \
                else self._dummy(4, self.dtype)
            li, fl, xr = self._linear_args(V)
            lin = self.linear is not None
            g_lin = torch.zeros_like(fl) if (lin and want_w) else self._dummy(4, self.dtype)
            g_xr = torch.zeros_like(xr) if (lin and want_w) else self._dummy(3, self.dtype)
            self._launch("bwd", kr.raster_backward, V, self.F, self.face_ch, self.face_w, self.inst, self.cam,
                         state.ref, state.count, state.slot_face, state.slot_depth, flags, g, gsd, grad_V, grad_w,
                         self.face_obj, li, fl, xr, g_lin, g_xr, self.J, int(grad_sd is not None), int(want_w),
                         int(lin), self.real)
            if lin and want_w:
                self.linear_grads = (g_lin, g_xr)
        return grad_V, (grad_w if want_w else None)

    # ------------------------------------------------------------------ affine densities
    def set_linear(self, lin_idx, face_lin, obj_xref) -> None:
        """Faces with affine density jumps (tetrahedral meshes, density linear per tetrahedron).

        lin_idx : (M,) int, row of each face in ``face_lin`` (-1: the face keeps its constant
        weights). face_lin : (S or 1, ML, J, 4) per column: the jump c of the density at the
        object's reference point and the jump of its gradient (1/mm), world frame, per vertex
        set. obj_xref : (S or 1, P, 3) reference point of each object (mm). None: no affine
        faces. After a backward with ``want_w``, ``linear_grads`` = (d/d face_lin, d/d obj_xref).
        """
        if lin_idx is None:
            self.linear = None
            return
        if self.deterministic:
            raise ValueError("deterministic=True does not support affine densities (tetrahedral meshes with "
                             "per-vertex densities); use per-tetrahedron (constant) densities")
        li = torch.as_tensor(np.asarray(lin_idx) if not isinstance(lin_idx, torch.Tensor) else lin_idx)
        fl = torch.as_tensor(face_lin).to(device=self.device, dtype=self.dtype).contiguous()
        xr = torch.as_tensor(obj_xref).to(device=self.device, dtype=self.dtype).contiguous()
        if li.shape != (len(self.F),) or fl.ndim != 4 or fl.shape[2:] != (self.J, 4) or xr.ndim != 3 \
                or xr.shape[1:] != (self.P, 3) or fl.shape[0] != xr.shape[0]:
            raise ValueError(f"affine densities: lin_idx (M={len(self.F)},), face_lin (S, ML, J={self.J}, 4), obj_xref "
                             f"(S, P={self.P}, 3); got {tuple(li.shape)}, {tuple(fl.shape)}, {tuple(xr.shape)}")
        if len(li) and int(li.max()) >= fl.shape[1]:
            raise ValueError("lin_idx points past the rows of face_lin")
        self.linear = (li.to(device=self.device, dtype=torch.int32).contiguous(), fl, xr)

    def _linear_args(self, V):
        if self.linear is None:
            return self._dummy(1, torch.int32), self._dummy(4, self.dtype), self._dummy(3, self.dtype)
        li, fl, xr = self.linear
        if fl.shape[0] not in (1, V.shape[0]) or xr.shape[0] != fl.shape[0]:
            raise ValueError(f"affine densities are given for {fl.shape[0]} vertex sets, the call has {V.shape[0]}")
        if fl.shape[0] == 1 and V.shape[0] > 1:
            fl = fl.expand(V.shape[0], -1, -1, -1).contiguous()
            xr = xr.expand(V.shape[0], -1, -1).contiguous()
            self.linear = (li, fl, xr)
        return li, fl, xr

    def _corners(self, n_vertices: int):
        key = ("corners", n_vertices)
        if key not in self._bufs:
            flat = self.F.reshape(-1).long()
            corners = torch.argsort(flat, stable=True)
            counts = torch.bincount(flat, minlength=n_vertices)
            ptr = torch.zeros(n_vertices + 1, dtype=torch.int64, device=self.device)
            ptr[1:] = torch.cumsum(counts, 0)
            self._bufs[key] = (ptr.to(torch.int32).contiguous(), corners.to(torch.int32).contiguous())
        return self._bufs[key]

    # ------------------------------------------------------------------ nesting
    def nesting_conflicts(self, state: RasterState, parents, tol_mm: float = 0.05, face_skip=None) -> np.ndarray:
        """(P, P) int64: [a, b] pixels where object a breaks the nesting against b (see the kernel).
        face_skip : (M,) bool, faces that are not a surface of their object (inside a tetrahedral
        mesh). Sorts the state's slots by depth (in place)."""
        if state.K == 0:
            raise RuntimeError("the nesting check needs the slots (keep_slots=True)")
        par = np.asarray(parents, dtype=np.int32)
        level = np.zeros(len(par), dtype=np.int32)
        for p in range(len(par)):
            q, d = par[p], 0
            while q >= 0:
                q, d = par[q], d + 1
            level[p] = d
        conf = torch.zeros((self.P, self.P), dtype=torch.int32, device=self.device)
        key = ("face_skip", None if face_skip is None else int(np.count_nonzero(face_skip)))
        if key not in self._bufs:
            fs = np.zeros(len(self.F), np.int32) if face_skip is None else np.asarray(face_skip, np.int32)
            self._bufs[key] = torch.as_tensor(fs, device=self.device).contiguous()
        self._launch("nest", kr.check_nesting, state.count, state.slot_face, state.slot_depth, self.face_obj,
                     self._bufs[key],
                     torch.as_tensor(par, device=self.device), torch.as_tensor(level, device=self.device), conf,
                     float(tol_mm))
        return conf.cpu().numpy().astype(np.int64)


# ----------------------------------------------------------------------------------------
# functional API: per-object path lengths for one camera
# ----------------------------------------------------------------------------------------
@dataclass
class Raster:
    """Output of :func:`rasterize` for one camera.

    Attributes (torch tensors on the kernels' device)
    --------------------------------------------------
    L : (P, H, W) float
        Path length (mm) of every pixel's ray through each of the P meshes,
        after the unbalanced-pixel fallback.
    flags : (P, H, W) bool
        True where the fallback replaced the value (or slots overflowed); the same
        pixels are flagged for every mesh.
    count : (H, W) int32
        Number of faces (of all meshes) covering each pixel.
    slot_face : (H, W, K) int32
        Global face index of each slot (faces of mesh p are numbered from
        ``face_offsets[p]``); only the first ``min(count, K)`` slots are valid.
    slot_depth : (H, W, K) float
        Signed depth (mm): positive where the ray leaves a mesh.
    face_offsets : (P + 1,) numpy int64
    n_fixed : (P,) numpy int64, pixels fixed by the fallback per mesh
    camera : Camera
    """

    L: torch.Tensor
    flags: torch.Tensor
    count: torch.Tensor
    slot_face: torch.Tensor
    slot_depth: torch.Tensor
    face_offsets: np.ndarray
    n_fixed: np.ndarray
    camera: Camera
    vertices: torch.Tensor | None = None  # (N, 3) all meshes' vertices
    faces: torch.Tensor | None = None  # (M, 3) int32, global vertex indices
    face_mesh: torch.Tensor | None = None  # (M,) int32
    vertex_offsets: np.ndarray | None = None  # (P + 1,)
    _rasterizer: Rasterizer | None = field(default=None, repr=False)
    _state: RasterState | None = field(default=None, repr=False)

    @property
    def K(self) -> int:
        return int(self.slot_face.shape[-1])

    def numpy(self) -> np.ndarray:
        return self.L.detach().cpu().numpy()


def _as_mesh_list(meshes):
    single = isinstance(meshes, Mesh) or (
        isinstance(meshes, tuple) and len(meshes) == 2 and not isinstance(meshes[0], (Mesh, tuple)))
    return single, ([meshes] if single else list(meshes))


class _Packed:
    """P prepared meshes packed together: V (N, 3) float64, F (M, 3) int32 global, face_obj (M,) int32,
    voff (P + 1,) vertex offsets, open_ (objects that are not watertight); ``tables`` holds the
    :class:`_FaceTables` of F (built on first use)."""

    def __init__(self, V, F, face_obj, voff, open_):
        self.V, self.F, self.face_obj, self.voff, self.open_ = V, F, face_obj, voff, open_
        self.tables: _FaceTables | None = None
        self._device = None

    def face_tables(self, device) -> _FaceTables:
        if self.tables is None or self._device != str(device):
            self.tables = _FaceTables(self.F, self.face_obj, device)
            self._device = str(device)
        return self.tables


def _pack(meshes, names) -> _Packed:
    """Prepare and pack P meshes. When all of them are :class:`Mesh` objects (read-only arrays, prepared
    once and cached on them), the packing and its face tables are cached on the first one, for this
    exact list of prepared arrays (checked by identity), so a later call does no per-face work."""
    preps = []
    for p, m in enumerate(meshes):
        preps.append(prepare_mesh(m, names[p], stacklevel=5))
    cache = key = None
    if all(isinstance(m, Mesh) for m in meshes):
        cache = meshes[0].__dict__.setdefault("_tx_prepared", {}).setdefault("packed", {})
        key = tuple(id(p) for p in preps)  # unique while the entry keeps the prepared tuples alive
        hit = cache.get(key)
        if hit is not None and all(a is b for a, b in zip(hit[0], preps)):
            return hit[1]
    if len(preps) == 1:  # nothing to concatenate
        V, F, closed = preps[0]
        packed = _Packed(V, F, np.zeros(len(F), np.int32), np.asarray([0, len(V)], np.int64), [] if closed else [0])
    else:
        Vs, Fs, objs, voff, open_ = [], [], [], [0], []
        for p, (V, F, closed) in enumerate(preps):
            Vs.append(V)
            Fs.append(F + np.int32(voff[-1]))
            objs.append(np.full(len(F), p, np.int32))
            voff.append(voff[-1] + len(V))
            if not closed:
                open_.append(p)
        packed = _Packed(np.concatenate(Vs), np.ascontiguousarray(np.concatenate(Fs), np.int32), np.concatenate(objs),
                         np.asarray(voff, np.int64), open_)
    if cache is not None:
        while len(cache) >= PACK_CACHE_SIZE:
            cache.pop(next(iter(cache)))  # the oldest
        cache[key] = (tuple(preps), packed)
    return packed


def rasterize(
    meshes,
    camera: Camera,
    *,
    K: int | None = None,
    keep_slots: bool = True,
    dtype: torch.dtype = torch.float32,
    fix_unbalanced: bool = True,
    fix_radius: int = 4,
    vertices: Sequence[torch.Tensor] | None = None,
    deterministic: bool = False,
    check_balance: bool = False,
    out: Raster | None = None,
) -> Raster:
    """Rasterize meshes into per-mesh path-length maps for one camera.

    Parameters
    ----------
    meshes : Mesh, (vertices, faces) pair, or a sequence of them (P meshes).
    camera : Camera
    K : int, optional
        Slot capacity per pixel. ``None`` grows it to what the scene needs.
    keep_slots : bool
        Store the K-slot buffers (needed by the backward pass). ``False`` is
        faster and leaves ``slot_*`` with K = 0.
    dtype : torch.float32 or torch.float64
        Precision of the arithmetic and of the outputs.
    fix_unbalanced, fix_radius :
        The fallback for pixels whose entries and exits through an open mesh do not balance.
    vertices : sequence of (N_p, 3) tensors, optional
        Replace the meshes' vertex positions (same connectivity).
    deterministic : bool
        Bitwise reproducible path lengths: each pixel's slots are sorted by
        face id and summed in that order, instead of accumulated with atomic
        float additions whose order varies between runs. Implies slots are
        kept and K grows as needed (a fixed ``K`` that overflows raises).
    check_balance : bool
        Track entries/exits of every mesh, not only of open ones (``Raster.n_fixed``
        then counts unbalanced pixels of closed meshes too, which must be zero).
    out : Raster, optional
        A previous result of the same meshes and camera size whose rasterizer and
        buffers are reused (its tensors are overwritten: do not keep using them).
    """
    runtime.ensure_init()
    if not isinstance(camera, Camera):
        raise TypeError(f"camera must be a taichi_xray.Camera, got {type(camera).__name__}")
    if dtype not in _REAL:
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    single, meshes = _as_mesh_list(meshes)
    if not meshes:
        raise ValueError("no meshes given")
    names = [(m.name or repr(m)) if isinstance(m, Mesh) else f"meshes[{p}]" for p, m in enumerate(meshes)]
    if vertices is not None:
        if len(vertices) != len(meshes):
            raise ValueError(f"got {len(vertices)} vertex tensors for {len(meshes)} meshes")
        meshes = [(v, m.faces if isinstance(m, Mesh) else m[1]) for v, m in zip(vertices, meshes)]
    pk = _pack(meshes, names)
    Vnp, F, voff, open_ = pk.V, pk.F, pk.voff, pk.open_
    P = len(meshes)
    rz = out._rasterizer if out is not None else None
    reuse = (rz is not None and rz.dtype == dtype and rz.C == P and len(rz.F) == len(F) and rz.K_fixed == K
             and rz.deterministic == deterministic and (rz.H, rz.W) == (camera.height, camera.width)
             and rz.open_objects == open_ and rz.J == 1 and rz.linear is None
             and (rz._ft is pk.tables or torch.equal(rz.F.cpu(), torch.as_tensor(F))))
    if reuse:
        rz.set_cameras([camera])
        rz.names = names
    else:
        rz = Rasterizer(None, None, None, None, P, [camera], open_objects=open_, names=names, dtype=dtype, K=K,
                        deterministic=deterministic, fix_radius=fix_radius,
                        _tables=pk.face_tables(runtime.torch_device()))
    # a copy of the vertices (the Mesh's arrays are read-only and shared with its cache)
    V = torch.from_numpy(np.array(Vnp[None], dtype=np.float32 if dtype == torch.float32 else np.float64))
    V = V.to(rz.device)
    st = rz.forward(V, keep_slots=keep_slots, check_balance=check_balance, fix_unbalanced=fix_unbalanced)
    n_fixed = np.zeros(P, dtype=np.int64)
    bal_objs = list(range(P)) if check_balance else open_
    for b, o in enumerate(bal_objs):
        n_fixed[o] = st.n_fixed[0, b]
    if n_fixed.any():
        warnings.warn(f"{int(n_fixed.sum())} pixels had unbalanced entries/exits (open mesh or edge-on faces) and "
                      f"{'took a neighbour' + chr(39) + 's path length' if fix_unbalanced else 'were left as they are'}"
                      f"; per mesh: {n_fixed.tolist()}", MeshWarning, stacklevel=2)
    flags = st.flags[0][None].expand(P, -1, -1)
    count = st.count[0] if st.count is not None else torch.zeros((camera.height, camera.width), dtype=torch.int32,
                                                                   device=rz.device)
    if st.slot_face is not None:
        sf, sd = st.slot_face[0], st.slot_depth[0]
    else:
        sf = torch.zeros((camera.height, camera.width, 0), dtype=torch.int32, device=rz.device)
        sd = torch.zeros((camera.height, camera.width, 0), dtype=dtype, device=rz.device)
    foff = np.concatenate([[0], np.cumsum(rz.faces_per_object)]).astype(np.int64)
    return Raster(st.L[0], flags, count, sf, sd, foff, n_fixed, camera, V[0], rz.F, rz.face_obj, voff, rz, st)


def path_length(meshes, camera, **kwargs) -> np.ndarray:
    """Path length (mm) of every pixel's ray through the mesh(es), as numpy float32.

    Parameters
    ----------
    meshes : a Mesh (or (vertices, faces)) -> (H, W); a list of P meshes -> (P, H, W).
    camera : a Camera, or a list of V cameras of equal size -> a leading (V,) axis.
    **kwargs : passed to :func:`rasterize` (``K``, ``dtype``, ...); slots are not kept.

    Returns
    -------
    numpy array, float32 (float64 with ``dtype=torch.float64``).
    """
    kwargs.setdefault("keep_slots", False)
    single_mesh, _ = _as_mesh_list(meshes)
    cams = [camera] if isinstance(camera, Camera) else list(camera)
    if not cams:
        raise ValueError("no cameras given")
    for c in cams:
        if not isinstance(c, Camera):
            raise TypeError(f"camera must be a taichi_xray.Camera (or a list of them), got {type(c).__name__}")
    if len({(c.height, c.width) for c in cams}) > 1:
        raise ValueError("all cameras must have the same detector size to stack their images")
    out, prev = [], None
    for c in cams:
        prev = rasterize(meshes, c, out=prev, **kwargs)
        out.append(prev.numpy().copy())
    arr = np.stack(out)
    if single_mesh:
        arr = arr[:, 0]
    return arr[0] if isinstance(camera, Camera) else arr
