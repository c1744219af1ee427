"""Kernel launches with their arguments bound once.

A Taichi 1.7 kernel call marshals every argument in Python on every launch
(type lookup, template key, pointer and shape of each array): measured on the
2-core CPU machine, about 15-25 us per torch-tensor argument, so a 15-argument
rasterizer launch spent ~0.3 ms before doing any work. In an optimisation loop
or a viewer the same buffers are passed every time, so :class:`BoundLaunch`
does that work once: it compiles the kernel for the given arguments, fills a
launch context, and re-launches it with only the scalar arguments updated.

It uses Taichi's internal launch API (``Kernel.ensure_compiled``,
``make_launch_context``, ``Program.compile_kernel`` / ``launch_kernel``), which
is why taichi is pinned to 1.7.4; :func:`supported` says whether it is usable
and callers fall back to a plain kernel call otherwise. A bound launch is not
recorded by ``ti.ad.Tape``: use plain calls inside a tape.

Arrays must stay alive and keep their storage (same data pointer, shape and
dtype) for as long as the launch is used; :class:`BoundLaunch` keeps
references to them, and :meth:`BoundLaunch.matches` tells whether a new set of
arrays is the same as the bound one.
"""
import numpy as np
import taichi as ti
from torch import Tensor as _Tensor

try:  # internals of taichi 1.7.4
    from taichi.lang import impl as _impl
    from taichi.lang import kernel_impl as _kimpl
    from taichi.types import ndarray_type as _ndt
    from taichi.types import primitive_types as _pt

    _OK = all(hasattr(_kimpl.Kernel, a) for a in ("ensure_compiled", "launch_kernel", "materialize")) and hasattr(
        _kimpl, "_process_args")
except Exception:  # pragma: no cover - another Taichi version
    _OK = False


def supported() -> bool:
    return _OK


def _key(a):
    """Identity of an argument for :meth:`BoundLaunch.matches`."""
    if isinstance(a, (bool, int, float, np.number)):
        return ("s", type(a).__name__, a)
    if isinstance(a, _Tensor):
        rg = a.requires_grad
        g = a.grad.data_ptr() if rg and a.grad is not None else 0
        return ("t", a.data_ptr(), a.shape, a.dtype, rg, g)
    if hasattr(a, "data_ptr") and hasattr(a, "shape"):  # another tensor type
        g = a.grad.data_ptr() if getattr(a, "grad", None) is not None else 0
        return ("t", a.data_ptr(), tuple(a.shape), str(a.dtype), bool(a.requires_grad), g)
    if isinstance(a, np.ndarray):
        return ("n", a.ctypes.data, a.shape, str(a.dtype))
    return ("o", id(a))


class BoundLaunch:
    """``BoundLaunch(kernel, *args)`` then ``launch(**scalars)`` repeatedly.

    ``args`` are what the kernel would be called with (arrays, scalars, template
    values). Scalars named in ``launch(name=value)`` are updated before each launch;
    arrays are fixed.
    """

    def __init__(self, kernel, *args, grad: bool = False):
        k = kernel._primal if hasattr(kernel, "_primal") else kernel
        if grad:
            k = kernel._adjoint if hasattr(kernel, "_adjoint") else k.grad
        self.kernel = k
        args = _kimpl._process_args(k, args, {})
        self.args = args
        self.keys = [_key(a) for a in args]
        key = k.ensure_compiled(*args)
        t_kernel = k.compiled_kernels[key]
        ctx = t_kernel.make_launch_context()
        self.scalar_slots = {}
        self.nd_slots = []
        slot = 0
        for arg, val in zip(k.arguments, args):
            anno = arg.annotation
            if isinstance(anno, ti.template):
                continue
            idx = (slot,)
            slot += 1
            if id(anno) in _pt.real_type_ids:
                ctx.set_arg_float(idx, float(val))
                self.scalar_slots[arg.name] = (idx, "f")
            elif id(anno) in _pt.integer_type_ids:
                ctx.set_arg_int(idx, int(val))
                self.scalar_slots[arg.name] = (idx, "i")
            elif isinstance(anno, _ndt.NdarrayType):
                if isinstance(val, ti.lang._ndarray.Ndarray):
                    self.nd_slots.append((idx, val))
                    self._set_ndarray(ctx, idx, val)
                else:
                    self._set_external(ctx, idx, val, anno)
            else:
                raise TypeError(f"BoundLaunch: unsupported argument {arg.name} ({anno})")
        self.ctx = ctx
        prog = _impl.get_runtime().prog
        self._prog = prog
        self.compiled = prog.compile_kernel(prog.config(), prog.get_device_caps(), t_kernel)
        # Taichi 1.7.4's LLVM launchers (CPU, CUDA) replace an ndarray argument's device allocation in
        # the context by its address when launching, so a second launch of the same context read an
        # address as an allocation (crash): they are set again before every launch there (~3-6 us each).
        # The gfx runtime (Vulkan, Metal, OpenGL) reads them without changing them.
        self._reset_nd = self.nd_slots if _impl.current_cfg().arch in (ti.x64, ti.arm64, ti.cuda) else []

    @staticmethod
    def _set_ndarray(ctx, idx, val):
        if val.grad is not None:
            ctx.set_arg_ndarray_with_grad(idx, val.arr, val.grad.arr)
        else:
            ctx.set_arg_ndarray(idx, val.arr)

    @staticmethod
    def _set_external(ctx, idx, v, anno):
        shape = tuple(v.shape)
        if anno.dtype is not None and id(anno.dtype) not in _pt.type_ids:
            shape = shape[: len(shape) - anno.dtype.ndim]
        if isinstance(v, np.ndarray):
            if not v.flags.c_contiguous:
                raise ValueError("BoundLaunch: numpy arrays must be C-contiguous")
            ctx.set_arg_external_array_with_shape(idx, int(v.ctypes.data), v.nbytes, shape, 0)
            return
        if not v.is_contiguous():
            raise ValueError("BoundLaunch: tensors must be contiguous")
        from .. import runtime

        dev = str(v.device)
        if dev != "cpu" and not (dev.startswith("cuda") and runtime.arch() == "cuda"):
            raise ValueError(f"BoundLaunch: a {dev} tensor cannot be bound on the {runtime.arch()} backend")
        if v.requires_grad and v.grad is None:
            import torch

            v.grad = torch.zeros_like(v)
        g = v.grad.data_ptr() if (v.requires_grad and v.grad is not None) else 0
        ctx.set_arg_external_array_with_shape(idx, int(v.data_ptr()), v.element_size() * v.nelement(), shape, int(g))

    def matches(self, *args) -> bool:
        if len(args) > len(self.keys):
            return False
        for a, o, k in zip(args, self.args, self.keys):
            if a is o and k[0] == "t":  # the bound tensor itself: only its storage can have changed
                rg = a.requires_grad
                if a.data_ptr() != k[1] or a.shape != k[2] or rg != k[4]:
                    return False
                if rg and (a.grad.data_ptr() if a.grad is not None else 0) != k[5]:
                    return False
            elif _key(a) != k:
                return False
        return True

    def launch(self, **scalars):
        for name, val in scalars.items():
            idx, kind = self.scalar_slots[name]
            if kind == "f":
                self.ctx.set_arg_float(idx, float(val))
            else:
                self.ctx.set_arg_int(idx, int(val))
        for idx, val in self._reset_nd:
            self._set_ndarray(self.ctx, idx, val)
        self._prog.launch_kernel(self.compiled, self.ctx)


class LaunchCache:
    """Bound launches keyed by a caller's name; rebinds when the arguments change."""

    def __init__(self):
        self._c = {}

    def __call__(self, name, kernel, *args, grad: bool = False, **scalars):
        if not _OK:
            (kernel.grad if grad else kernel)(*args)
            return
        b = self._c.get(name)
        if b is None or not b.matches(*args):
            b = BoundLaunch(kernel, *args, grad=grad)
            self._c[name] = b
        b.launch()

    def clear(self):
        self._c.clear()
