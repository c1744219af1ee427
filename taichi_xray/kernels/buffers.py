"""Pooled work buffers: torch tensors, or ``ti.ndarray`` kept on the kernels' device (resident mode).

On Vulkan, Metal and OpenGL/GLES Taichi copies every external array argument
(torch tensor, numpy array) host -> device before a launch and back after it,
so a rasterizer launch with ~20 array arguments moved all of them, every
frame. :class:`BufferPool` hides the difference between the two storage kinds:

* ``resident=False`` (CPU, CUDA): torch tensors on ``device``, exactly what the
  callers used before (no conversion): nothing changes on those backends.
* ``resident=True`` (:func:`taichi_xray.runtime.resident`): ``ti.ndarray``
  allocated once per (name, shape, dtype) and reused; zeroed on the device
  (``Ndarray.fill``); :meth:`BufferPool.upload` copies a host array into a
  pooled ndarray (one host -> device copy) and :meth:`BufferPool.resident_copy`
  keeps a device copy of a torch table that is uploaded again only when the
  table changes.

:class:`HostCopy` holds an array as the kernels keep it and downloads it at most
once, for what reads it on the host (the viewer and the dataset worker).

A bound launch (:mod:`taichi_xray.kernels.launch`) identifies an ndarray by its
``id``; the pool keeps its ndarrays alive, so a launch bound to them stays valid
until a buffer is reallocated (another shape), which rebinds it.
"""
import ctypes

import numpy as np
import taichi as ti
import torch


Ndarray = ti.lang._ndarray.Ndarray

TI_DTYPE = {torch.float32: ti.f32, torch.float64: ti.f64, torch.int32: ti.i32, torch.int64: ti.i64,
            torch.uint8: ti.u8}
_NP = {torch.float32: np.float32, torch.float64: np.float64, torch.int32: np.int32, torch.int64: np.int64,
       torch.uint8: np.uint8}


# CPU tensors up to this many bytes are cleared with one memset on the calling thread: torch's zero_()
# wakes its OpenMP threads for anything above 32k elements (OMP_WAIT_POLICY=PASSIVE, see runtime),
# measured on the 2-core machine: 256 KB 38 us against 3 us, 4 MB 115 us against 43 us (16 MB: 145
# against 218 us, so larger buffers keep zero_())
MEMSET_MAX_BYTES = 8 << 20


def zero_tensor(t: torch.Tensor) -> None:
    """``t.zero_()``; a contiguous CPU tensor up to MEMSET_MAX_BYTES with one memset."""
    n = t.numel() * t.element_size()
    if t.device.type == "cpu" and n <= MEMSET_MAX_BYTES and t.is_contiguous() and not t.requires_grad:
        if n:
            ctypes.memset(t.data_ptr(), 0, n)
    else:
        t.zero_()


def is_nd(a) -> bool:
    """True for a Taichi ndarray (device-resident buffer)."""
    return isinstance(a, Ndarray)


def torch_dtype(a) -> torch.dtype:
    """The torch dtype of a tensor or of an ndarray."""
    if not is_nd(a):
        return a.dtype
    for k, v in TI_DTYPE.items():
        if a.dtype == v:
            return k
    raise TypeError(f"no torch dtype for the ndarray dtype {a.dtype}")


def to_numpy(a) -> np.ndarray:
    """Host copy (ndarray: one device -> host transfer) or view (CPU tensor) as numpy."""
    if is_nd(a):
        return a.to_numpy()
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def to_torch(a, device=None) -> torch.Tensor:
    """A torch tensor of ``a``: an ndarray is downloaded once (torch has no Vulkan/Metal tensors, so
    this is the host boundary); a tensor is returned as it is (moved to ``device`` when given)."""
    if is_nd(a):
        t = torch.from_numpy(a.to_numpy())
        return t if device is None or str(device) == "cpu" else t.to(device)
    return a if device is None else a.to(device)


@ti.kernel
def add_air(L: ti.types.ndarray(), ray: ti.types.ndarray(), cam_of: ti.types.ndarray(), ch: ti.i32):
    """L (I, C, H, W) channel ``ch`` += ray (n_cameras, H, W) of each instance's camera ``cam_of`` (I,)."""
    for i, r, c in ti.ndrange(L.shape[0], L.shape[2], L.shape[3]):
        L[i, ch, r, c] += ray[cam_of[i], r, c]


class HostCopy:
    """An array as the kernels keep it (``dev``: a torch tensor, or a resident ``ti.ndarray``) and its
    torch copy for what reads it on the host: :meth:`host` is ``dev`` itself, or the ndarray
    downloaded at the first call and kept (``downloads`` counts the downloads)."""

    __slots__ = ("dev", "device", "downloads", "_host")

    def __init__(self, a, device):
        self.dev, self.device, self.downloads, self._host = a, device, 0, None

    @property
    def resident(self) -> bool:
        return is_nd(self.dev)

    def host(self) -> torch.Tensor:
        if self._host is None:
            if is_nd(self.dev):
                self._host = to_torch(self.dev, self.device)
                self.downloads += 1
            else:
                self._host = self.dev
        return self._host


class BufferPool:
    """Named buffers reused between calls; torch tensors or (``resident``) Taichi ndarrays."""

    def __init__(self, resident: bool, device="cpu"):
        self.resident = bool(resident)
        self.device = device
        self._b: dict = {}
        self._dummies: dict = {}
        self._src: dict = {}
        self._src_ver: dict = {}

    # ------------------------------------------------------------------ allocation
    def get(self, name: str, shape, dtype: torch.dtype, zero: bool = False):
        """The buffer ``name`` of this shape and dtype (allocated on first use or when they change);
        zeroed when ``zero``, else its contents are whatever the last user left."""
        b = self._b.get(name)
        if not self.resident and b is not None and b.dtype == dtype and b.shape == shape:  # the common case
            if zero:
                zero_tensor(b)
            return b
        shape = tuple(int(s) for s in shape)
        if self.resident:
            if b is None or tuple(b.shape) != shape or b.dtype != TI_DTYPE[dtype]:
                b = ti.ndarray(TI_DTYPE[dtype], shape)  # zero-initialised by Taichi
                self._b[name] = b
            elif zero:
                b.fill(0)
            return b
        if b is None or tuple(b.shape) != shape or b.dtype != dtype:
            b = torch.zeros(shape, dtype=dtype, device=self.device) if zero else \
                torch.empty(shape, dtype=dtype, device=self.device)
            self._b[name] = b
        elif zero:
            zero_tensor(b)
        return b

    def dummy(self, ndim: int, dtype: torch.dtype):
        """A (1,) * ndim placeholder for an argument the kernel does not read."""
        key = (ndim, dtype)
        b = self._dummies.get(key)
        if b is None:
            b = self._dummies[key] = self.get(f"dummy{ndim}{dtype}", (1,) * ndim, dtype)
        return b

    def __contains__(self, name):
        return name in self._b

    # ------------------------------------------------------------------ operations
    @staticmethod
    def zero(a) -> None:
        if is_nd(a):
            a.fill(0)
        else:
            zero_tensor(a)

    def upload(self, name: str, a, dtype: torch.dtype | None = None):
        """``a`` (numpy array or torch tensor) on the kernels' device: a contiguous torch tensor when
        not resident, else the pooled ndarray ``name`` filled with it (one host -> device copy)."""
        if not self.resident:
            t = a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
            return t.to(device=self.device, dtype=dtype or t.dtype).contiguous()
        if isinstance(a, torch.Tensor):
            dtype = dtype or a.dtype
            h = a.detach().to(device="cpu", dtype=dtype).contiguous().numpy()
        else:
            h = np.asarray(a)
            dtype = dtype or torch.from_numpy(h[:0].copy()).dtype
            h = np.ascontiguousarray(h, _NP[dtype])
        b = self.get(name, h.shape, dtype)
        if h.size:
            b.from_numpy(h)
        return b

    def resident_copy(self, name: str, t):
        """``t`` itself when not resident; else a device copy kept under ``name`` that is uploaded
        again only when ``t`` is another object whose contents differ (tables, cameras)."""
        if not self.resident or t is None or is_nd(t):
            return t
        src = self._src.get(name)
        if src is not None and name in self._b:
            if src is t:
                if t._version == self._src_ver[name]:
                    return self._b[name]
            elif src._version == self._src_ver[name] and src.shape == t.shape and src.dtype == t.dtype \
                    and torch.equal(src.cpu(), t.detach().cpu()):
                self._src[name], self._src_ver[name] = t, t._version
                return self._b[name]
        b = self.upload(name, t)
        self._src[name] = t
        self._src_ver[name] = t._version
        return b

