"""Taichi kernels of the physics stage: polychromatic Beer-Lambert, differentiated by Taichi.

``beer_lambert`` computes, for B weight sets (spectral outputs: the detector
signal, a variance image, photon-counting bins, ...)::

    out[b, i, r, c] += sum_e  w[b, row, e] * exp(-sum_ch mu[ch, e] * L[i, ch, r, c])

with ``row`` = 0 (one spectrum for the whole detector), ``r`` (a spectrum per
image row, e.g. the anode heel effect along the columns' direction) or ``c``
(per column), chosen by the ``rows`` template.

Its backward is Taichi's reverse-mode autodiff of the same kernel
(``beer_lambert.grad``). The form of the kernel is what makes that both
correct and fast in Taichi 1.7.4 (each point below was measured):

* energies run in a dynamic loop over chunks of ``E_CHUNK`` with a static,
  unrolled loop inside, and each chunk adds its partial sum to the output
  with ``+=``. No local is carried across a dynamic loop: Taichi 1.7's
  reverse mode returned wrong gradients for a local accumulator carried
  through a dynamic energy loop (and for channel values loaded into locals
  before it), and writing the output with ``=`` instead of ``+=`` gave wrong
  gradients too. Fully unrolling all energies is correct but compiles once
  per number of energies (seconds each); chunks of 8 compile once per number
  of channels.
* the number of energies is padded to a multiple of ``E_CHUNK`` with zero
  weights (and zero mu), which adds exactly nothing.
* gradients w.r.t. ``mu`` and ``w`` are sums over all pixels (atomic adds on a
  few addresses); Taichi only emits them when those arrays require
  gradients (the kernel is specialised on it), so they cost nothing unless
  asked for.

``out`` must be zero on entry.
"""
import taichi as ti

E_CHUNK = 8


@ti.kernel
def beer_lambert(
    L: ti.types.ndarray(),  # (I, C, H, W) path lengths per channel, mm
    mu: ti.types.ndarray(),  # (C, E) linear attenuation, 1/mm, E a multiple of E_CHUNK
    w: ti.types.ndarray(),  # (B, R, E) weights (photons x detector response), R = 1, H or W
    out: ti.types.ndarray(),  # (B, I, H, W), accumulated
    C: ti.template(),
    B: ti.template(),
    rows: ti.template(),
):
    for i, r, c in ti.ndrange(L.shape[0], L.shape[2], L.shape[3]):
        rr = 0
        if ti.static(rows == 1):
            rr = r
        if ti.static(rows == 2):
            rr = c
        for k in range(mu.shape[1] // E_CHUNK):
            acc = ti.Vector([w[0, 0, 0] * 0 for _ in ti.static(range(B))])  # in the weights' precision
            for e8 in ti.static(range(E_CHUNK)):
                e = k * E_CHUNK + e8
                s = mu[0, e] * 0  # in mu's precision (L may be float32 while mu, w are float64)
                for ch in ti.static(range(C)):
                    s += mu[ch, e] * L[i, ch, r, c]
                t = ti.exp(-s)
                for b in ti.static(range(B)):
                    acc[b] += w[b, rr, e] * t
            for b in ti.static(range(B)):
                out[b, i, r, c] += acc[b]
