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
from .kernels.buffers import BufferPool, is_nd, to_numpy, to_torch, torch_dtype
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
# from this many faces on, faces are traversed in a spatial order (see _face_order): the pixel writes
# of consecutive faces then stay in the cache (below it, the whole image does)
REORDER_FACES = 4096
# from this many faces on, the projected vertices are also stored in the order of that traversal
# (below it they stay in the cache anyway, and the projection pass would cost more than it saves)
VERTEX_ORDER_FACES = 65536
# scenes (lists of meshes) whose packing and face tables rasterize() keeps per first Mesh
PACK_CACHE_SIZE = 4


def _spread3(x: np.ndarray) -> np.ndarray:
    """Bits 0..9 of x (uint32) moved to bits 0, 3, 6, ..., 27 (one axis of a 3-D Morton code)."""
    x = x & np.uint32(0x3FF)
    x = (x | (x << np.uint32(16))) & np.uint32(0x030000FF)
    x = (x | (x << np.uint32(8))) & np.uint32(0x0300F00F)
    x = (x | (x << np.uint32(4))) & np.uint32(0x030C30C3)
    x = (x | (x << np.uint32(2))) & np.uint32(0x09249249)
    return x


def _sorted_rows(F: np.ndarray) -> np.ndarray:
    """The forward kernel's face rows (M, 4) int32: each face's vertex indices in increasing order and,
    in column 3, +1 when that order is a rotation of the face's (same orientation) or -1 when it is
    reversed. Every edge then runs from its lower vertex index to its higher one in a fixed position
    of the row, so the kernel finds each edge's canonical direction (the watertight tie rules) without
    comparing indices (a data-dependent branch per edge), and the parity restores the face's sign."""
    F = np.asarray(F, dtype=np.int32)
    out = np.empty((len(F), 4), dtype=np.int32)
    out[:, :3] = np.sort(F, axis=1)
    # a permutation of 3 distinct items is a rotation iff the minimum is followed (cyclically) by the
    # middle one
    a = np.argmin(F, axis=1)
    nxt = F[np.arange(len(F)), (a + 1) % 3]
    out[:, 3] = np.where(nxt == out[:, 1], 1, -1)
    return out


def _face_order(F: np.ndarray, V: np.ndarray):
    """Traversal order of a large mesh: (F_run (M, 3) int32, ids (M,) int32, vpos (N,) int32 or
    ``None`` below VERTEX_ORDER_FACES faces), or ``None`` below REORDER_FACES faces (the mesh and the
    image stay in the cache anyway).

    The forward kernel reads each face's projected corners and writes to the pixels it covers.
    Faces are visited in the Morton (Z-curve) order of their centroids in ``V`` (N, 3) (a
    vertex set of the mesh; rigid motion and moderate deformation keep the order local), so
    consecutive faces lie side by side in space, hence on every detector. In A/B runs in one
    process on the 2-core development machine it was 1.5-1.8x faster than vertex order on a
    1.3M-face sphere at 1024^2 and 1.6x faster than the given order of a 20k-face sphere at
    2048^2 with slots, where the slot and image writes otherwise missed the cache
    (benchmarks/results/forward-cpu-2core.md has the resulting figures against gVXR). From VERTEX_ORDER_FACES faces on, vertices are stored in the projection
    buffer in the order the traversal first uses them (``vpos[k]``: position of vertex k;
    ``F_pos = vpos[F_run]``), so the corner reads run nearly in sequence too. Only the order of the rows
    changes, so every face covers exactly the same pixels with the same depths. ``F_run`` holds the
    faces as given; the tables store them as :func:`_sorted_rows`.
    """
    M = len(F)
    if M < REORDER_FACES:
        return None
    V = np.asarray(V)
    if V.dtype not in (np.float32, np.float64):
        V = V.astype(np.float64)
    c = V[F[:, 0]]  # 3 x the centroids, accumulated in place (memory: one (M, 3) array)
    c += V[F[:, 1]]
    c += V[F[:, 2]]
    lo = c.min(0)
    scale = (1023.0 / np.maximum(c.max(0) - lo, 1e-30)).astype(c.dtype)
    c -= lo
    c *= scale
    q = np.clip(c, 0, 1023, out=c).astype(np.uint32)
    del c
    code = _spread3(q[:, 0]) | (_spread3(q[:, 1]) << np.uint32(1)) | (_spread3(q[:, 2]) << np.uint32(2))
    del q
    order = np.argsort(code, kind="stable").astype(np.int32)
    del code
    F_run = np.ascontiguousarray(np.take(F, order, axis=0))
    if M < VERTEX_ORDER_FACES:
        return F_run, order, None
    N = len(V)
    # position of each vertex = the order in which the traversal first reads it (unused ones last)
    first = np.full(N, F_run.size, dtype=np.int32)
    np.minimum.at(first, F_run.ravel(), np.arange(F_run.size, dtype=np.int32))
    vpos = np.empty(N, dtype=np.int32)
    vpos[np.argsort(first, kind="stable")] = np.arange(N, dtype=np.int32)
    return F_run, order, vpos


class _FaceTables:
    """What a :class:`Rasterizer` derives from its faces and their objects alone, on its device.

    F (M, 3) int32 faces; F_run (M, 4) / fid: the forward kernel's rows (:func:`_sorted_rows`) in
    traversal order and the face id of each (``order`` is None and ``fid`` the identity while the
    faces' own order is kept); F_pos / vpos: where the projection buffer holds the corners of each
    row (in the row's sorted order) and every vertex (``None`` when the order is kept); face_obj (M,) int32;
    P, faces_per_object, F_max. The traversal order of a large mesh is spatial and needs its
    vertices: it is set by the second forward pass (:meth:`spatial_order`); ``version`` counts
    the changes, so that the rasterizers sharing the tables refresh their run-order copies.
    :func:`rasterize` keeps one per set of :class:`Mesh` objects (their arrays are read-only),
    so that a fresh call on meshes already seen does no per-face work on the host; the tensors
    are shared by the rasterizers built from it and must not be written to.
    """

    def __init__(self, faces, face_obj, device):
        Fnp = np.ascontiguousarray(faces.detach().cpu().numpy() if isinstance(faces, torch.Tensor) else faces, np.int32)
        self.F = torch.as_tensor(Fnp, device=device).contiguous()
        self.F_max = int(Fnp.max()) if len(Fnp) else -1
        self._Fnp = Fnp
        self.F_run = torch.as_tensor(_sorted_rows(Fnp), device=device).contiguous()  # face order until
        # spatial_order() sets one
        self.fid = torch.arange(len(Fnp), dtype=torch.int32, device=device)
        self.order = None
        self.F_pos = self.vpos = None
        self.version = 0
        self.pending = len(Fnp) >= REORDER_FACES  # a spatial order is due (see spatial_order)
        self._n_vertices = None
        self._passes = 0
        fobj = np.ascontiguousarray(face_obj.detach().cpu().numpy() if isinstance(face_obj, torch.Tensor)
                                    else face_obj, np.int32)
        self.face_obj = torch.as_tensor(fobj, device=device).contiguous()
        self.P = int(fobj.max()) + 1 if len(fobj) else 0
        self.faces_per_object = np.bincount(fobj, minlength=self.P)
        self._cache: dict = {}

    def spatial_order(self, n: int, vertices) -> None:
        """Called by every forward pass with the number of vertices n and ``vertices()``, which gives
        vertex set 0 (N, 3) as numpy (called only when needed): set the traversal order of a large
        mesh (see _face_order) at the second pass that uses these tables (a one-off call, e.g.
        ``rasterize()`` of raw arrays that are not cached, would pay for it without using it: 5 ms
        at 20k faces, 0.4 s at 1.3M), and again when the number of vertices changes."""
        if self.pending:
            self._passes += 1
            if self._passes < 2:
                return
        elif not (self._n_vertices is not None and n != self._n_vertices):
            return
        Vnp = vertices()
        fo = _face_order(self._Fnp, Vnp)
        dev = self.F.device
        rows = _sorted_rows(fo[0])
        self.F_run = torch.as_tensor(rows, device=dev).contiguous()
        self.fid = torch.as_tensor(fo[1], device=dev).contiguous()
        self.order = self.fid
        self.F_pos = None if fo[2] is None else torch.as_tensor(np.ascontiguousarray(fo[2][rows[:, :3]]),
                                                                 device=dev).contiguous()
        self.vpos = None if fo[2] is None else torch.as_tensor(fo[2], device=dev).contiguous()
        self._n_vertices = n
        self._cache.clear()
        self.pending = False
        self.version += 1

    def dev(self, t):
        """Resident mode: a ``ti.ndarray`` copy of one of these (read-only) tables, uploaded once and
        kept with them, so rasterizers built from the same tables share it."""
        if t is None or is_nd(t):
            return t
        key = ("nd", id(t))
        hit = self._cache.get(key)
        if hit is None or hit[0] is not t:
            hit = (t, BufferPool(True).upload("t", t))
            self._cache[key] = hit
        return hit[1]

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
        key = ("objw", dtype, self.version)
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
    V_dev : the vertices as the kernels read them (V itself, or its ``ti.ndarray`` copy).

    Resident mode (``Rasterizer.resident``, Vulkan/Metal): L, count, slot_face, slot_depth and ref
    are ``ti.ndarray`` on the device (the next stage reads them there); ``flags`` and ``V`` stay
    torch (host). Convert with :func:`taichi_xray.kernels.buffers.to_torch` where torch is needed
    (one device -> host copy each).
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
    V_dev: object = None

    @property
    def resident(self) -> bool:
        return is_nd(self.L)


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
    resident : keep the tables and work buffers as ``ti.ndarray`` on the kernels' device and launch
        the kernels with them (no per-launch host <-> device copies on Vulkan/Metal); ``None``:
        :func:`taichi_xray.runtime.resident`. The states it returns then hold ndarrays (see
        :class:`RasterState`); inputs (vertices, gradients) are torch and are uploaded once per call.
    """

    def __init__(self, faces, face_obj, face_ch, face_w, n_channels: int, cameras, instances=None,
                 open_objects=(), names=None, dtype=torch.float32, K: int | None = None,
                 deterministic: bool = False, fix_radius: int = 4, _tables: _FaceTables | None = None,
                 resident: bool | None = None):
        runtime.ensure_init()
        if dtype not in _REAL:
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.device = runtime.torch_device()
        self.dtype = dtype
        self.real = _REAL[dtype]
        self.resident = runtime.resident() if resident is None else bool(resident)
        self._pool = BufferPool(self.resident, self.device)  # the kernels' work buffers
        self._host = BufferPool(False, self.device) if self.resident else self._pool  # torch-side buffers
        self._V_src: dict = {}
        ft = _tables if _tables is not None else _FaceTables(faces, face_obj, self.device)
        self._ft = ft
        self.F = ft.F
        self._F_max = ft.F_max
        self._F_run = ft.F_run
        self._fid = ft.fid
        self._order_version = ft.version
        self.face_obj = ft.face_obj
        self.P = ft.P
        self.names = list(names) if names is not None else [f"object {p}" for p in range(self.P)]
        self.faces_per_object = ft.faces_per_object
        self.C = int(n_channels)
        self._bufs: dict = {}
        self._object_weights = face_ch is None
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
        self._object_weights = False
        self.face_ch = ch.to(device=self.device, dtype=torch.int32).contiguous()
        self.face_w = w.to(device=self.device, dtype=self.dtype).contiguous()
        # copies in traversal order for the forward kernel (the same tensors when the order is kept)
        self._ch_run = self._ft.run_order(self.face_ch)
        self._w_run = self._ft.run_order(self.face_w)

    def _sync_order(self, V: torch.Tensor) -> None:
        """Let the first forward pass set a large mesh's spatial traversal order (from vertex set 0),
        and take the run-order copies of the tables when the shared face tables changed order."""
        ft = self._ft
        ft.spatial_order(int(V.shape[1]), lambda: to_numpy(V)[0] if is_nd(V) else V[0].detach().cpu().numpy())
        if self._order_version == ft.version:
            return
        self._F_run, self._fid = ft.F_run, ft.fid
        if self._object_weights:
            self.face_ch, self.face_w, self._ch_run, self._w_run = ft.object_weights(self.dtype)
        else:
            self._ch_run = ft.run_order(self.face_ch)
            self._w_run = ft.run_order(self.face_w)
        self._set_balance(self._bal_objs)
        self._order_version = ft.version

    def _set_balance(self, objs) -> None:
        self._bal_objs = list(objs)
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
        if instances is None:
            instances = [(0, c) for c in range(len(cams))]
        inst = np.asarray(instances, dtype=np.int32).reshape(-1, 2)
        if len(inst) == 0 or inst[:, 1].min() < 0 or inst[:, 1].max() >= len(cams) or inst[:, 0].min() < 0:
            raise ValueError(f"instances must be (vertex set >= 0, camera in [0, {len(cams)})) pairs")
        prev = getattr(self, "cameras", None)
        if (prev is not None and len(prev) == len(cams) and all(a is b for a, b in zip(prev, cams))
                and np.array_equal(self.inst_np, inst)):
            return  # the same (immutable) cameras: nothing to upload
        self.cameras = cams
        self.H, self.W = cams[0].height, cams[0].width
        cam = pack_cameras(cams, self.dtype, self.device)
        old = getattr(self, "cam", None)
        if old is not None and old.shape == cam.shape:  # written in place: the bound launches stay valid
            old.copy_(cam)
        else:
            self.cam = cam
        self.inst_np = inst
        old = getattr(self, "inst", None)
        if old is not None and tuple(old.shape) == inst.shape:
            old.copy_(torch.from_numpy(inst))
        else:
            self.inst = torch.as_tensor(inst, device=self.device).contiguous()
        self.S = int(inst[:, 0].max()) + 1

    # ------------------------------------------------------------------ buffers
    def _buf(self, name, shape, dtype, zero=False):
        """A pooled kernel buffer: torch tensor, or ``ti.ndarray`` in resident mode."""
        return self._pool.get(name, shape, dtype, zero)

    def _dummy(self, ndim, dtype):
        return self._pool.dummy(ndim, dtype)

    def _d(self, name, t):
        """What the kernels are given for table ``t``: ``t`` itself, or (resident) its device copy,
        uploaded again only when it changes. Tables of the shared face tables are kept with them."""
        if not self.resident or t is None or is_nd(t):
            return t
        if name in ("F", "F_run", "F_pos", "vpos", "fid", "face_obj", "face_bal") or (self._object_weights and name in (
                "face_ch", "face_w", "ch_run", "w_run")):
            return self._ft.dev(t)
        return self._pool.resident_copy(name, t)

    def _vertices_dev(self, V: torch.Tensor, tag: str = ""):
        """The vertices as the kernels read them: V, or (resident) its ndarray copy (one per buffer
        tag, like the outputs), uploaded unless V is the tensor of the previous call with this tag and
        has not been modified in place since (torch's version counter; writes through ``.data`` or a
        numpy view are not seen: pass a new tensor then)."""
        if not self.resident:
            return V
        src = self._V_src.get(tag)
        if src is not None and src[0] is V and src[1] == V._version and tag + "V" in self._pool:
            return self._pool.get(tag + "V", V.shape, V.dtype)
        Vd = self._pool.upload(tag + "V", V)
        self._V_src[tag] = (V, V._version)
        return Vd

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
        if is_nd(V) and not self.resident:
            raise TypeError("a ti.ndarray of vertices needs a resident rasterizer (resident=True)")
        if len(V.shape) != 3 or V.shape[2] != 3 or V.shape[0] < self.S:
            raise ValueError(f"vertices must have shape (S>={self.S}, N, 3), got {tuple(V.shape)}")
        if (torch_dtype(V) if is_nd(V) else V.dtype) != self.dtype or not (is_nd(V) or V.is_contiguous()):
            raise ValueError(f"vertices must be contiguous {self.dtype}")
        if V.shape[1] == 0:
            raise ValueError("vertices must have shape (S, N, 3) with N > 0, got N = 0")
        if self._F_max >= V.shape[1]:
            raise ValueError(f"faces index {self._F_max} but there are {V.shape[1]} vertices")
        I, C, H, W = len(self.inst_np), self.C, self.H, self.W
        self._sync_order(V)
        self._gen[buffer_tag] = self._gen.get(buffer_tag, 0) + 1
        store = bool(keep_slots or self.deterministic)
        bal_objs = list(range(self.P)) if check_balance else self.open_objects
        if bal_objs != self.open_objects or check_balance != getattr(self, "_bal_all", False):
            self._set_balance(bal_objs)
            self._bal_all = check_balance
        track = self.n_bal > 0
        t = buffer_tag
        pool, d = self._pool, self._d
        Vd = V if is_nd(V) else self._vertices_dev(V, t)
        status = self._buf("status", (I, kr.N_STATUS, max(self.P, 1)), torch.int32)
        ref = self._buf(t + "ref", (I, 4), self.dtype)  # written by the kernel
        vbox = self._buf("vbox", (V.shape[0], -(-V.shape[1] // kr.BOX_BLOCK), 6), self.dtype)
        balance = self._buf(t + "balance", (I, self.n_bal, H, W), torch.int32) if track else self._dummy(4, torch.int32)
        for attempt in range(2):
            L = self._buf(t + "L", (I, C, H, W), self.dtype, zero=True)
            if store:
                count = self._buf(t + "count", (I, H, W), torch.int32, zero=True)
                sf = self._buf(t + "slot_face", (I, H, W, self.K), torch.int32)
                sd = self._buf(t + "slot_depth", (I, H, W, self.K), self.dtype)
            else:
                count, sf, sd = self._dummy(3, torch.int32), self._dummy(4, torch.int32), self._dummy(4, self.dtype)
            if track:
                pool.zero(balance)
            perm = self._ft.vpos is not None
            pre = perm or V.shape[1] * I >= PREPROJECT_VERTICES
            proj = self._buf("proj", (I, V.shape[1], 4), self.dtype) if pre else self._dummy(3, self.dtype)
            li, fl, xr = self._linear_args(V)
            Fp, vpos = ((d("F_pos", self._ft.F_pos), d("vpos", self._ft.vpos)) if perm else
                        (self._dummy(2, torch.int32), self._dummy(1, torch.int32)))
            self._launch(t + "fwd", kr.raster_forward, Vd, d("F_run", self._F_run), Fp, vpos, d("fid", self._fid),
                         d("face_obj", self.face_obj), d("ch_run", self._ch_run), d("w_run", self._w_run),
                         d("face_bal", self.face_bal), d("inst", self.inst), d("cam", self.cam), ref, vbox, proj, L,
                         count, sf, sd, balance, status, d("li", li), d("fl", fl), d("xr", xr), self.J, int(store),
                         int(track), int(pre), int(self.linear is not None), int(perm),
                         int(self.device == "cpu" and V.shape[0] * V.shape[1] <= kr.SERIAL_BOX_VERTICES),
                         int(self.device == "cpu"), self.real)
            # the counters (and the largest count of an overflowing pixel): one small read
            if self.resident:
                st = status.to_numpy()
            elif status.is_cpu:  # read in place
                st = status.numpy()
            else:  # one device -> host transfer
                st = status.cpu().numpy()
            need = int(st[:, kr.ST_NEED, 0].max()) if store else 0
            self._check_status(st)
            if not store or need <= self.K or self.K_fixed is not None:
                break
            self.K = need  # grow (never shrinks) and run again
        flags = self._host.get(t + "flags", (I, H, W), torch.bool, zero=True)  # torch (host side when resident)
        n_fixed = np.zeros((I, max(self.n_bal, 0)), dtype=np.int64)
        if track:
            badb = to_torch(balance, self.device) != 0  # (I, B, H, W)
            n_fixed = badb.sum(dim=(2, 3)).cpu().numpy().astype(np.int64)
            if n_fixed.any():
                bad = badb.any(dim=1)
                if fix_unbalanced:
                    fixed = self._buf(t + "L_fixed", (I, C, H, W), self.dtype)
                    self._launch(t + "fill", kr.fill_unbalanced, L, pool.upload(t + "bad", bad.to(torch.uint8)),
                                 fixed, self.fix_radius)
                    L = fixed
                flags |= bad
        if self.deterministic:
            if need > self.K:
                raise ValueError(f"deterministic=True needs every crossing in a slot: K={self.K} but {need} faces "
                                 "cover a pixel")
            self._launch(t + "sum", kr.sum_slots_sorted, count, sf, sd, d("face_ch", self.face_ch),
                         d("face_w", self.face_w), d("inst", self.inst), d("cam", self.cam), ref, L, self.J, self.real)
        if store and need > self.K:
            over = to_torch(count, self.device) > self.K
            flags |= over
            warnings.warn(f"K={self.K} slots overflowed on {int(over.sum())} pixels (up to {need} faces cover a "
                          "pixel); path lengths stay exact, but those pixels are flagged and get no gradient. "
                          "Use K=None to grow K.", KOverflowWarning, stacklevel=3)
        if not store:
            count = sf = sd = None
        return RasterState(L, flags, count, sf, sd, n_fixed, self.K if store else 0, V, ref, Vd)

    def _check_status(self, st: np.ndarray) -> None:
        if not st.any():
            return
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

        Resident mode: ``grad_L`` / ``grad_sd`` (torch) are uploaded, the gradients are accumulated in
        device buffers and downloaded into the torch results (the torch boundary crosses the host);
        ``grad_L`` and ``grad_V`` may be ``ti.ndarray`` (the Taichi tape), read and accumulated into on
        the device.
        """
        if self.resident:
            return self._backward_resident(state, grad_L, grad_sd, want_w, grad_V)
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

    def _backward_resident(self, state, grad_L, grad_sd, want_w, grad_V):
        if state.K == 0:
            raise RuntimeError("the forward pass kept no slots (keep_slots=False or under no_grad): it cannot be "
                               "differentiated")
        pool, d = self._pool, self._d
        V = state.V
        if tuple(grad_L.shape) != tuple(state.L.shape):
            raise ValueError(f"grad_L must have shape {tuple(state.L.shape)}, got {tuple(grad_L.shape)}")
        Vd = state.V_dev if state.V_dev is not None else pool.upload("bwd_V", V)
        g = grad_L if is_nd(grad_L) else pool.upload("bwd_g", grad_L.detach(), self.dtype)
        flags = pool.upload("bwd_flags", state.flags.view(torch.uint8))
        gV = grad_V if is_nd(grad_V) else pool.get("bwd_gV", tuple(V.shape), self.dtype, zero=True)
        gw = pool.get("bwd_gw", tuple(self.face_w.shape), self.dtype, zero=True) if want_w else \
            self._dummy(2, self.dtype)
        F, ch, w = d("F", self.F), d("face_ch", self.face_ch), d("face_w", self.face_w)
        inst, cam = d("inst", self.inst), d("cam", self.cam)
        lin = self.linear is not None
        if self.deterministic and grad_sd is None:
            I = len(self.inst_np)
            grad_F = self._buf("grad_F", (I, len(self.F), 3, 3), self.dtype)
            gwF = self._buf("grad_wF", (I, len(self.F), self.J), self.dtype) if want_w else self._dummy(3, self.dtype)
            self._launch("bwd_faces", kr.raster_backward_faces, Vd, F, ch, w, inst, cam, state.ref, flags, g, grad_F,
                         gwF, self.J, int(want_w), self.real)
            ptr, corners = self._corners(V.shape[1])
            self._launch("gather", kr.gather_vertex_grad, d("ptr", ptr), d("corners", corners), inst, grad_F, gV)
            gw_t = to_torch(gwF, self.device).sum(0) if want_w else None
        else:
            gsd = pool.upload("bwd_gsd", grad_sd.detach(), self.dtype) if grad_sd is not None \
                else self._dummy(4, self.dtype)
            li, fl, xr = self._linear_args(V)
            g_lin = pool.get("bwd_glin", tuple(fl.shape), self.dtype, zero=True) if (lin and want_w) \
                else self._dummy(4, self.dtype)
            g_xr = pool.get("bwd_gxr", tuple(xr.shape), self.dtype, zero=True) if (lin and want_w) \
                else self._dummy(3, self.dtype)
            self._launch("bwd", kr.raster_backward, Vd, F, ch, w, inst, cam, state.ref, state.count, state.slot_face,
                         state.slot_depth, flags, g, gsd, gV, gw, d("face_obj", self.face_obj), d("li", li),
                         d("fl", fl), d("xr", xr), g_lin, g_xr, self.J, int(grad_sd is not None), int(want_w),
                         int(lin), self.real)
            if lin and want_w:
                self.linear_grads = (to_torch(g_lin, self.device), to_torch(g_xr, self.device))
            gw_t = to_torch(gw, self.device) if want_w else None
        if gV is grad_V:  # accumulated on the device
            return grad_V, gw_t
        gV_t = to_torch(gV, self.device)
        if grad_V is None:
            grad_V = gV_t
        else:
            grad_V += gV_t
        return grad_V, gw_t

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
        key = ("face_skip", None if face_skip is None else int(np.count_nonzero(face_skip)))
        if key not in self._bufs:
            fs = np.zeros(len(self.F), np.int32) if face_skip is None else np.asarray(face_skip, np.int32)
            self._bufs[key] = self._pool.upload(f"face_skip{key[1]}", fs) if self.resident else \
                torch.as_tensor(fs, device=self.device).contiguous()
        if self.resident:
            conf = self._pool.get("conf", (self.P, self.P), torch.int32, zero=True)
            args = (self._pool.resident_copy("parents", torch.as_tensor(par)),
                    self._pool.resident_copy("level", torch.as_tensor(level)), conf)
        else:
            conf = torch.zeros((self.P, self.P), dtype=torch.int32, device=self.device)
            args = (torch.as_tensor(par, device=self.device), torch.as_tensor(level, device=self.device), conf)
        self._launch("nest", kr.check_nesting, state.count, state.slot_face, state.slot_depth,
                     self._d("face_obj", self.face_obj), self._bufs[key], *args, float(tol_mm))
        return (conf.to_numpy() if self.resident else conf.cpu().numpy()).astype(np.int64)


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
        self.kept: dict = {}  # path_length's last Raster per detector size and dtype (never handed out)

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
    _keep: bool = False,
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
    _keep : private (:func:`path_length`): reuse the Raster kept with the meshes' packing for
        this detector size and dtype, and keep the result there; the caller copies what it
        needs and must never hand the Raster out.
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
    # path_length's Raster kept with the packing of Mesh objects (raw arrays are packed anew each call)
    kkey = (camera.height, camera.width, dtype) if (_keep and out is None and
                                                    all(isinstance(m, Mesh) for m in meshes)) else None
    kept = pk.kept.get(kkey) if kkey else None
    if kkey:
        out = kept
    rz = out._rasterizer if out is not None else None
    reuse = (rz is not None and rz.dtype == dtype and rz.C == P and len(rz.F) == len(F) and rz.K_fixed == K
             and rz.deterministic == deterministic and rz.fix_radius == fix_radius
             and (rz.H, rz.W) == (camera.height, camera.width)
             and rz.open_objects == open_ and rz.J == 1 and rz.linear is None
             and (rz._ft is pk.tables or torch.equal(rz.F.cpu(), torch.as_tensor(F))))
    if reuse:
        rz.set_cameras([camera])
        rz.names = names
    else:
        rz = Rasterizer(None, None, None, None, P, [camera], open_objects=open_, names=names, dtype=dtype, K=K,
                        deterministic=deterministic, fix_radius=fix_radius,
                        _tables=pk.face_tables(runtime.torch_device()))
    if kept is not None and rz is kept._rasterizer and kept._state.V.dtype == dtype:
        V = kept._state.V  # the kept copy of the same read-only vertices (never handed out)
    else:  # a copy of the vertices (the Mesh's arrays are read-only and shared with its cache)
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
    if st.resident:  # Raster holds torch tensors: one download each (the host boundary on Vulkan/Metal)
        dev = rz.device
        st = RasterState(to_torch(st.L, dev), st.flags, None if st.count is None else to_torch(st.count, dev),
                         None if st.slot_face is None else to_torch(st.slot_face, dev),
                         None if st.slot_depth is None else to_torch(st.slot_depth, dev), st.n_fixed, st.K, st.V,
                         to_torch(st.ref, dev), st.V_dev)
    flags = st.flags[0][None].expand(P, -1, -1)
    if st.slot_face is not None:
        count, sf, sd = st.count[0], st.slot_face[0], st.slot_depth[0]
    else:  # no slots: zero counts and empty slot tensors, pooled like the rest of the result
        count = rz._host.get("no_slots_count", (camera.height, camera.width), torch.int32,
                             zero="no_slots_count" not in rz._host)  # zeroed once: nothing writes to it
        sf = rz._host.get("no_slots_face", (camera.height, camera.width, 0), torch.int32)
        sd = rz._host.get("no_slots_depth", (camera.height, camera.width, 0), dtype)
    foff = np.concatenate([[0], np.cumsum(rz.faces_per_object)]).astype(np.int64)
    res = Raster(st.L[0], flags, count, sf, sd, foff, n_fixed, camera, V[0], rz.F, rz.face_obj, voff, rz, st)
    if kkey:
        pk.kept[kkey] = res
    return res


def path_length(meshes, camera, **kwargs) -> np.ndarray:
    """Path length (mm) of every pixel's ray through the mesh(es), as numpy float32.

    Parameters
    ----------
    meshes : a Mesh (or (vertices, faces)) -> (H, W); a list of P meshes -> (P, H, W).
    camera : a Camera, or a list of V cameras of equal size -> a leading (V,) axis.
    **kwargs : passed to :func:`rasterize` (``K``, ``dtype``, ...); slots are not kept.

    Returns
    -------
    numpy array, float32 (float64 with ``dtype=torch.float64``), a new array on every call.

    When ``meshes`` are :class:`Mesh` objects, the rasterizer (bound launches, pooled buffers,
    the vertices on the kernels' device) is kept with their packing for the next call with the
    same detector size and dtype, so a loop over cameras or poses of the same meshes does no
    allocation or binding after the first call; it is freed with the meshes.
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
        prev = rasterize(meshes, c, out=prev, _keep=prev is None, **kwargs)
        out.append(prev.numpy().copy())
    arr = out[0][None] if len(out) == 1 else np.stack(out)
    if single_mesh:
        arr = arr[:, 0]
    return arr[0] if isinstance(camera, Camera) else arr
