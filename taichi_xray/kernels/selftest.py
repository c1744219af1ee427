"""A start-up check of a GPU backend: do atomic additions in nested loops add up?

The rasterizer relies on them (per-pixel counters and path-length sums). Mesa's
software Vulkan (llvmpipe) was seen to lose about 1.6 % of such updates with
Taichi 1.7.4, which silently corrupts images; :func:`atomics_ok` finds that.
"""
import taichi as ti


@ti.kernel
def _nested_atomics(cnt: ti.types.ndarray(), acc: ti.types.ndarray(), n: ti.i32):
    for i in range(n):
        for r in range(8):
            for c in range(8):
                ti.atomic_add(cnt[(i + r) % 64, (i * 7 + c) % 64], 1)
                ti.atomic_add(acc[(i + r) % 64, (i * 7 + c) % 64], 0.5)


def atomics_ok(n: int = 20000) -> bool:
    cnt = ti.ndarray(ti.i32, (64, 64))
    acc = ti.ndarray(ti.f32, (64, 64))
    cnt.fill(0)
    acc.fill(0)
    _nested_atomics(cnt, acc, n)
    c = cnt.to_numpy()
    a = acc.to_numpy()
    return int(c.sum()) == n * 64 and float(a.sum()) == n * 32.0
