"""Path-length rasterization: meshes + camera -> per-mesh path-length maps.

:func:`rasterize` runs the Taichi kernels of :mod:`taichi_xray.kernels.raster`
and returns a :class:`Raster` holding the path lengths and the per-pixel
K-slot buffers (face ids and signed depths) that the backward pass and the
debugging views read. :func:`path_length` is the short numpy entry point.

Behaviour at the edges of the method:

* K overflow: with ``K=None`` (default) the slot capacity grows to the
  largest number of faces covering one pixel (the kernel reruns once), so
  nothing is dropped. With a fixed ``K`` the path lengths stay exact (they
  are accumulated separately) but slots beyond K are dropped; this warns
  (:class:`KOverflowWarning`) with the number of pixels affected and those
  pixels are flagged.
* Open meshes: a pixel whose entries and exits do not balance takes the path
  length of the nearest balanced pixel (within ``fix_radius``) and is flagged
  in ``Raster.flags``; the backward pass gives it zero gradient. Their number
  is in ``Raster.n_fixed`` and a :class:`~taichi_xray.mesh.MeshWarning`
  reports them.
* Faces entirely behind the source (``w <= 0`` at all three vertices) are
  culled: the rays start at the source and go toward the detector. A face
  crossing the plane through the source parallel to the detector cannot be
  projected; :func:`rasterize` raises :class:`GeometryError` naming the mesh.
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
from .mesh import Mesh, MeshWarning

__all__ = ["Raster", "rasterize", "path_length", "GeometryError", "KOverflowWarning"]


class GeometryError(ValueError):
    """The scene cannot be projected (a mesh crosses the source plane)."""


class KOverflowWarning(RuntimeWarning):
    """More faces cover a pixel than the fixed slot capacity K."""


_REAL = {torch.float32: ti.f32, torch.float64: ti.f64}


@dataclass
class Raster:
    """Output of :func:`rasterize` for one camera.

    Attributes (torch tensors on the kernels' device)
    --------------------------------------------------
    L : (P, H, W) float
        Path length (mm) of every pixel's ray through each of the P meshes,
        after the unbalanced-pixel fallback.
    flags : (P, H, W) bool
        True where the fallback replaced the value (or slots overflowed).
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
    # packed inputs kept for the backward pass
    vertices: torch.Tensor | None = None  # (N, 3) all meshes' vertices
    faces: torch.Tensor | None = None  # (M, 3) int32, global vertex indices
    face_mesh: torch.Tensor | None = None  # (M,) int32
    vertex_offsets: np.ndarray | None = None  # (P + 1,)
    _buffers: dict | None = field(default=None, repr=False)  # storage reused by rasterize(..., out=self)

    @property
    def K(self) -> int:
        return int(self.slot_face.shape[-1])

    def numpy(self) -> np.ndarray:
        return self.L.detach().cpu().numpy()


def _as_vertices(v, name: str, dtype, device) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        t = v.detach()
    else:
        t = torch.from_numpy(np.array(v, copy=True))
    if t.ndim != 2 or t.shape[1] != 3:
        raise ValueError(f"{name}: vertices must have shape (N, 3), got {tuple(t.shape)}")
    if not (t.dtype.is_floating_point):
        raise TypeError(f"{name}: vertices must be floating point, got {t.dtype}")
    t = t.to(device=device, dtype=dtype)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: vertices contain NaN or inf")
    return t


def _as_faces(F, n_vertices: int, name: str, device) -> torch.Tensor:
    F = F.detach() if isinstance(F, torch.Tensor) else torch.from_numpy(np.array(F, copy=True))
    if F.ndim != 2 or F.shape[1] != 3 or F.dtype.is_floating_point or F.dtype == torch.bool:
        raise ValueError(f"{name}: faces must be an integer array of shape (M, 3)")
    F = F.to(device=device, dtype=torch.int32)
    if len(F) and (int(F.min()) < 0 or int(F.max()) >= n_vertices):
        raise ValueError(f"{name}: face indices out of range [0, {n_vertices - 1}]")
    return F


def _mesh_tensors(m: Mesh, dtype, device):
    """Vertices and int32 faces of a Mesh on the kernels' device, cached on the Mesh.

    A Mesh is immutable and was validated when it was built, so its tensors
    are made once per (dtype, device). Inward meshes are reoriented (with a
    warning) once; open meshes warn once.
    """
    cache = m.__dict__.setdefault("_tx_tensors", {})
    key = (dtype, str(device))
    if key not in cache:
        rep = m.check()
        src = m
        if rep.watertight and not rep.outward:
            src = m.oriented()  # warns
        elif not rep.watertight:
            warnings.warn(
                f"{m!r} is not watertight ({'; '.join(rep.problems())}); unbalanced pixels "
                "take a neighbour's value and are flagged",
                MeshWarning,
                stacklevel=4,
            )
        V = torch.from_numpy(np.array(src.vertices)).to(device=device, dtype=dtype)
        F = torch.from_numpy(np.array(src.faces, dtype=np.int32)).to(device)
        cache[key] = (V, F)
    return cache[key]


def _pack(meshes, dtype, device):
    """Concatenate meshes: vertices (N, 3), faces (M, 3) int32, face_mesh (M,), offsets."""
    Vs, Fs, face_off, vert_offs = [], [], [0], [0]
    for p, m in enumerate(meshes):
        if isinstance(m, Mesh):
            V, F = _mesh_tensors(m, dtype, device)
        else:
            try:
                V, F = m
            except (TypeError, ValueError):
                raise TypeError(f"meshes[{p}] must be a Mesh or a (vertices, faces) pair") from None
            V = _as_vertices(V, f"meshes[{p}]", dtype, device)
            F = _as_faces(F, len(V), f"meshes[{p}]", device)
        Vs.append(V)
        Fs.append(F if vert_offs[-1] == 0 else F + vert_offs[-1])
        vert_offs.append(vert_offs[-1] + len(V))
        face_off.append(face_off[-1] + len(F))
    if not Vs:
        raise ValueError("no meshes given")
    face_off = np.asarray(face_off, dtype=np.int64)
    if len(Vs) == 1:
        V, F = Vs[0].contiguous(), Fs[0].contiguous()
        face_mesh = torch.zeros(len(F), dtype=torch.int32, device=device)
    else:
        V = torch.cat(Vs).contiguous()
        F = torch.cat(Fs).contiguous()
        face_mesh = torch.repeat_interleave(
            torch.arange(len(Vs), dtype=torch.int32, device=device),
            torch.as_tensor(np.diff(face_off), device=device),
        ).contiguous()
    return V, F, face_mesh, face_off, np.asarray(vert_offs, dtype=np.int64)


def _camera_tensors(camera: Camera, dtype, device):
    """P, inv(P[:, :3]) and the source as tensors, cached on the (immutable) camera."""
    key = ("tensors", dtype, str(device))
    if key not in camera._cache:
        camera._cache[key] = tuple(
            torch.tensor(np.array(a), dtype=dtype, device=device) for a in (camera.P, camera.M_inv, camera.source)
        )
    return camera._cache[key]


# slot capacity to start from, per image size and face count (grown K is remembered)
_K_HINT: dict = {}


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
        The fallback for pixels whose entries and exits do not balance.
    vertices : sequence of (N_p, 3) tensors, optional
        Replace the meshes' vertex positions (same connectivity), as the
        torch bridge does.
    deterministic : bool
        Bitwise reproducible path lengths: each pixel's slots are sorted by
        face id and summed in that order, instead of accumulated with atomic
        float additions whose order varies between runs. Implies slots are
        kept and K grows as needed (a fixed ``K`` that overflows raises).
    out : Raster, optional
        A previous result whose buffers are reused when their shapes, dtypes
        and device fit (no new allocation, no first-touch page faults): its
        tensors are overwritten, so do not keep using them. For repeated
        renders (viewers, benchmarks, optimisation loops).
    """
    runtime.ensure_init()
    if not isinstance(camera, Camera):
        raise TypeError(f"camera must be a taichi_xray.Camera, got {type(camera).__name__}")
    if dtype not in _REAL:
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    single = isinstance(meshes, Mesh) or (
        isinstance(meshes, tuple) and len(meshes) == 2 and not isinstance(meshes[0], (Mesh, tuple))
    )
    meshes = [meshes] if single else list(meshes)
    if vertices is not None:
        if len(vertices) != len(meshes):
            raise ValueError(f"got {len(vertices)} vertex tensors for {len(meshes)} meshes")
        meshes = [(v, m.faces if isinstance(m, Mesh) else m[1]) for v, m in zip(vertices, meshes)]
    device = runtime.torch_device()
    real = _REAL[dtype]
    V, F, face_mesh, face_off, vert_off = _pack(meshes, dtype, device)
    P, H, W = len(meshes), camera.height, camera.width
    cam, minv, src = _camera_tensors(camera, dtype, device)

    if deterministic:
        keep_slots = True
    hint_key = (H, W, len(F))
    if not keep_slots:
        cap = 0
    elif K is None:
        cap = _K_HINT.get(hint_key, 8)
    else:
        cap = int(K)
        if cap < 1:
            raise ValueError(f"K must be a positive integer, got {K}")
    pool = dict(out._buffers) if (out is not None and out._buffers) else {}

    def buf(name, shape, dt):
        t = pool.get(name)
        if t is None or tuple(t.shape) != tuple(shape) or t.dtype != dt or t.device != torch.device(device):
            t = torch.empty(shape, dtype=dt, device=device)
            pool[name] = t
        return t

    proj = buf("proj", (len(V), 3), dtype)
    L = buf("L", (P, H, W), dtype)
    balance = buf("balance", (P, H, W), torch.int32)
    count = buf("count", (H, W), torch.int32)
    flags = buf("flags", (P, H, W), torch.uint8)
    status = buf("status", (kr.ST_UNBALANCED + P,), torch.int32)
    for attempt in range(2):
        slot_face = buf("slot_face", (H, W, max(cap, 1)), torch.int32)
        slot_depth = buf("slot_depth", (H, W, max(cap, 1)), dtype)
        for t in (L, balance, count, flags):
            t.zero_()
        kr.rasterize_faces(V, F, face_mesh, cam, proj, src, minv, L, balance, count, slot_face, slot_depth,
                           status, cap, int(keep_slots), real)
        # one device -> host transfer for all the counters
        st = torch.cat([status[: kr.ST_MAX_COUNT], count.max().reshape(1).to(torch.int32),
                        (balance != 0).sum(dim=(1, 2)).to(torch.int32)]).cpu().numpy()
        if st[kr.ST_STRADDLE]:
            names = _straddling_meshes(proj, F, face_mesh, face_off, meshes)
            raise GeometryError(
                f"{int(st[kr.ST_STRADDLE])} faces cross the plane through the X-ray source parallel to the "
                f"detector ({names}); the source must lie outside every mesh and in front of none of its faces"
            )
        need = int(st[kr.ST_MAX_COUNT])
        if keep_slots and K is None:
            _K_HINT[hint_key] = max(need, 1)
        if not keep_slots or need <= cap or K is not None:
            break
        cap = need  # grow K and run again
    overflow = None
    if deterministic:
        if need > cap:
            raise ValueError(f"deterministic=True needs every crossing in a slot: K={cap} but {need} faces cover a pixel")
        kr.sum_slots_sorted(count, slot_face, slot_depth, face_mesh, L)
    if keep_slots and need > cap:
        overflow = count > cap
        warnings.warn(
            f"K={cap} slots overflowed on {int(overflow.sum())} pixels (up to {need} faces cover a pixel); "
            "path lengths stay exact, but those pixels are flagged and get no gradient. Use K=None to grow K.",
            KOverflowWarning,
            stacklevel=2,
        )
    if not keep_slots:
        slot_face = slot_face[:, :, :0]
        slot_depth = slot_depth[:, :, :0]

    n_fixed = np.zeros(P, dtype=np.int64)
    unbalanced = st[kr.ST_UNBALANCED:].astype(np.int64)
    if fix_unbalanced and unbalanced.any():
        fixed = buf("L_fixed", (P, H, W), dtype)
        kr.fill_unbalanced(L, balance, fixed, flags, int(fix_radius), real)
        L = fixed
        n_fixed = unbalanced
        warnings.warn(
            f"{int(n_fixed.sum())} pixels had unbalanced entries/exits (open mesh or edge-on faces) and took a "
            f"neighbour's path length; per mesh: {n_fixed.tolist()}",
            MeshWarning,
            stacklevel=2,
        )
    flags = flags.view(torch.bool)
    if overflow is not None:
        flags = flags | overflow[None]
    return Raster(L, flags, count, slot_face, slot_depth, face_off, n_fixed, camera, V, F, face_mesh, vert_off, pool)


def _straddling_meshes(proj, F, face_mesh, face_off, meshes) -> str:
    w = proj[:, 2][F.long()]
    bad = ((w <= 0).any(dim=1) & (w > 0).any(dim=1)).cpu().numpy()
    ids = np.unique(face_mesh.cpu().numpy()[bad])
    return ", ".join(repr(meshes[i]) if isinstance(meshes[i], Mesh) else f"meshes[{i}]" for i in ids)


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
    single_mesh = isinstance(meshes, Mesh) or (isinstance(meshes, tuple) and len(meshes) == 2
                                              and not isinstance(meshes[0], (Mesh, tuple)))
    cams = [camera] if isinstance(camera, Camera) else list(camera)
    if not cams:
        raise ValueError("no cameras given")
    for c in cams:
        if not isinstance(c, Camera):
            raise TypeError(f"camera must be a taichi_xray.Camera (or a list of them), got {type(c).__name__}")
    if len({(c.height, c.width) for c in cams}) > 1:
        raise ValueError("all cameras must have the same detector size to stack their images")
    out = [rasterize(meshes, c, **kwargs).numpy() for c in cams]
    arr = np.stack(out)
    if single_mesh:
        arr = arr[:, 0]
    return arr[0] if isinstance(camera, Camera) else arr
