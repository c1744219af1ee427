"""The render pipeline: Scene -> path lengths per object -> physics -> image.

:func:`render` rasterizes all objects of a scene in one call
(:func:`taichi_xray.rasterize`), checks that every object stays inside its
declared parent, turns the per-object path lengths into exclusive lengths per
material (each object's length minus its direct children's, summed over the
objects of one material; plus the air between source and detector when
``[output] air = true``), runs the polychromatic Beer-Lambert kernel
(:func:`taichi_xray.physics.attenuation.beer_lambert`) and forms the image the
scene's ``[output]`` asks for. Grouping by material is exact (the exponent is
linear in the lengths) and makes the physics cost scale with the number of
materials, not of objects.

Timings (ms, wall clock, GPU synchronised): ``rasterize`` (mesh packing,
the rasterizer and the check that children stay inside their parents), ``physics`` (exclusive lengths, attenuation coefficients and
the Beer-Lambert kernel) and ``output`` (transmission, line integral, noise,
windowing and the copy to numpy).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import taichi as ti
import torch

from . import runtime
from .camera import Camera
from .imageio import robust_window, to_uint
from .physics.attenuation import beer_lambert, exclusive_matrix
from .physics.materials import get_material
from .rasterize import rasterize
from .scene import Scene, SceneError, load_scene

__all__ = ["render", "RenderResult", "NestingError", "NestingWarning", "check_nesting", "memory_estimate", "use_arch",
           "NESTING_TOL_MM"]

NESTING_TOL_MM = 0.05  # a child may exceed its parent by this much (rasterization round-off)


class NestingError(SceneError):
    """An object extends outside its declared parent (found after rasterization)."""


class NestingWarning(UserWarning):
    """Same as :class:`NestingError`, reported as a warning (``render(..., on_nesting="warn")``)."""


@dataclass
class RenderResult:
    """Output of :func:`render`. Arrays are numpy, indexed [row, column].

    path_lengths : (P, H, W) float32, mm, per object in the scene's order (``names``).
    intensity : (H, W) float64, detector signal sum_E w(E) exp(-sum mu L) (w = photons x response).
    transmission : (H, W) float64, intensity / I0 (I0 = signal with nothing in the beam).
    line_integral : (H, W) float64, -ln(transmission).
    image : (H, W) float64, the quantity ``[output] kind`` selects (noisy when ``[output] noise``).
    pixels : (H, W) uint8 or uint16, ``image`` windowed (and inverted) for a PNG.
    window : (lo, hi) used for ``pixels``.
    I0 : float. camera : Camera. timings : {"rasterize", "physics", "output"} in ms.
    nesting : messages about objects outside their parents (empty when all is well).
    """

    path_lengths: np.ndarray
    intensity: np.ndarray
    transmission: np.ndarray
    line_integral: np.ndarray
    image: np.ndarray
    pixels: np.ndarray
    window: tuple
    I0: float
    camera: Camera
    names: list
    kind: str
    arch: str
    timings: dict = field(default_factory=dict)
    nesting: list = field(default_factory=list)

    @property
    def total_ms(self) -> float:
        return float(sum(self.timings.values()))


def _sync():
    ti.sync()
    if torch.cuda.is_available() and runtime.arch() == "cuda":
        torch.cuda.synchronize()


_REQUESTED: dict = {}


def use_arch(arch: str | None = None) -> str:
    """Start Taichi on ``arch`` unless it already runs there (or was already asked for it).

    None keeps the running backend (or starts the default one); "auto" keeps a running
    backend. Returns the backend in use.
    """
    cur = runtime.arch()
    if arch is None or (cur is not None and (arch in ("auto", cur) or _REQUESTED.get("arch") == arch)):
        return runtime.ensure_init()
    got = runtime.init(arch)
    _REQUESTED["arch"] = arch
    return got


def check_nesting(L, names, parents, tol_mm: float = NESTING_TOL_MM) -> list[str]:
    """Messages for objects that extend outside their parent.

    L : (P, H, W) path lengths (numpy or torch), mm. For each child q of p, the
    pixels where ``L[q] > L[p] + tol_mm``; for each parent, also the pixels where
    its exclusive length ``L[p] - sum_children L[q]`` is below ``-tol_mm``
    although no single child exceeds it (children overlapping each other).
    """
    Lt = torch.as_tensor(L)
    msgs = []
    children: dict[int, list[int]] = {}
    for q, p in enumerate(parents):
        if p >= 0:
            children.setdefault(p, []).append(q)
    for p, qs in children.items():
        any_child = torch.zeros(Lt.shape[1:], dtype=torch.bool, device=Lt.device)
        for q in qs:
            excess = Lt[q] - Lt[p]
            bad = excess > tol_mm
            n = int(bad.sum())
            if n:
                any_child |= bad
                msgs.append(f"object '{names[q]}' extends outside its parent '{names[p]}' on {n} pixels "
                            f"(by up to {float(excess.max()):.3g} mm)")
        excl = Lt[p] - Lt[qs].sum(0)
        bad = (excl < -tol_mm) & ~any_child
        n = int(bad.sum())
        if n:
            msgs.append(f"children of '{names[p]}' ({', '.join(repr(names[q]) for q in qs)}) overlap each other "
                        f"or leave it on {n} pixels (exclusive length of '{names[p]}' down to "
                        f"{float(excl.min()):.3g} mm)")
    return msgs


def _material_key(m):
    return (m.name, round(m.density, 9), tuple(sorted((k, round(v, 12)) for k, v in m.composition.items())))


def _group(scene: Scene, air: bool):
    """(G (M, P) float64, air_row index or None, materials list of M): L_mat = G @ L (+ ray length on air_row)."""
    parents = scene.parents
    A = exclusive_matrix(parents, with_air=air)  # (P[+1], P)
    mats = [o.material for o in scene.objects] + ([get_material("air")] if air else [])
    keys, groups = {}, []
    for i, m in enumerate(mats):
        k = _material_key(m)
        if k not in keys:
            keys[k] = len(groups)
            groups.append(m)
    B = np.zeros((len(groups), len(mats)))
    for i, m in enumerate(mats):
        B[keys[_material_key(m)], i] = 1.0
    air_row = keys[_material_key(mats[-1])] if air else None
    return B @ A, air_row, groups


def render(scene, camera: Camera | None = None, arch: str | None = None, *, spectrum=None,
           on_nesting: str = "raise", nesting_tol_mm: float = NESTING_TOL_MM) -> RenderResult:
    """Render a scene (a :class:`~taichi_xray.scene.Scene` or a path to a TOML scene file).

    camera : replaces the scene's camera. arch : Taichi backend ("cpu", "cuda", "vulkan",
    "auto"); initialises Taichi if it runs on another backend (None: keep / default).
    spectrum : replaces the scene's spectrum. on_nesting : "raise" (:class:`NestingError`),
    "warn" (:class:`NestingWarning`) or "ignore" when an object leaves its parent by more
    than ``nesting_tol_mm`` on some pixel.
    """
    if not isinstance(scene, Scene):
        scene = load_scene(scene)
    if on_nesting not in ("raise", "warn", "ignore"):
        raise ValueError(f"on_nesting must be 'raise', 'warn' or 'ignore', got {on_nesting!r}")
    backend = use_arch(arch)
    cam = scene.camera if camera is None else camera
    if not isinstance(cam, Camera):
        raise TypeError(f"camera must be a taichi_xray.Camera, got {type(cam).__name__}")
    spec = scene.spectrum if spectrum is None else spectrum
    out = scene.output
    if out.air and cam.pixel_spacing is None:
        raise ValueError("[output] air = true needs a camera with pixel_spacing (the detector's distance)")
    timings = {}

    # ---- rasterize: one call for all objects
    t0 = time.perf_counter()
    raster = rasterize(scene.meshes, cam, keep_slots=False)
    _sync()
    L = raster.L
    # ---- nesting check (counted with the rasterization it checks)
    nesting = check_nesting(L, scene.names, scene.parents, nesting_tol_mm)
    timings["rasterize"] = (time.perf_counter() - t0) * 1e3
    if nesting and on_nesting != "ignore":
        msg = f"{scene.label}: objects outside their declared parent: " + "; ".join(nesting)
        if on_nesting == "raise":
            raise NestingError(msg)
        warnings.warn(msg, NestingWarning, stacklevel=2)

    # ---- physics
    t0 = time.perf_counter()
    fdt = torch.float32 if backend in ("vulkan", "metal") else torch.float64
    G, air_row, mats = _group(scene, out.air)
    dev = L.device
    # G has entries in {-1, 0, 1}: the product in the rasterizer's float32 is exact up to round-off
    Lm = (torch.as_tensor(G, dtype=L.dtype, device=dev) @ L.reshape(L.shape[0], -1)).reshape(
        len(mats), *L.shape[1:]).to(fdt)
    if air_row is not None:
        Lm[air_row] += torch.as_tensor(cam.ray_lengths(), dtype=fdt, device=dev)
    e = spec.energies
    mu = np.stack([m.mu(e) for m in mats])
    w = spec.photons * scene.detector.response(e)
    I0 = float(w.sum())
    I = beer_lambert(Lm.contiguous(), torch.as_tensor(mu, dtype=fdt, device=dev),
                     torch.as_tensor(w, dtype=fdt, device=dev))
    _sync()
    timings["physics"] = (time.perf_counter() - t0) * 1e3

    # ---- output
    t0 = time.perf_counter()
    I = I.detach().cpu().numpy().astype(np.float64)
    T = I / I0
    if out.noise is not None:
        n0, seed = out.noise
        rng = np.random.default_rng(seed)
        T = rng.poisson(np.clip(T, 0.0, None) * n0) / n0
        I = T * I0
    with np.errstate(divide="ignore"):
        # a pixel with no counts gets the line integral of half a photon
        floor = 0.5 / out.noise[0] if out.noise is not None else np.finfo(np.float64).tiny
        LI = -np.log(np.maximum(T, floor))
    image = {"line_integral": LI, "transmission": T, "intensity": I}[out.kind]
    window = robust_window(image) if out.window is None else tuple(out.window)
    pixels = to_uint(image, out.bits, window, out.invert)
    Lnp = L.detach().cpu().numpy()
    timings["output"] = (time.perf_counter() - t0) * 1e3
    return RenderResult(Lnp, I, T, LI, image, pixels, window, I0, cam, scene.names, out.kind, backend,
                        timings, nesting)


def memory_estimate(scene: Scene, camera: Camera | None = None) -> dict:
    """Rough peak memory (bytes) of :func:`render`: {"rasterize", "physics", "output", "total"}.

    rasterize: path lengths, entry/exit balance, flags and the fallback copy, (P, H, W) x 4 bytes
    each, and the per-pixel face count; physics: per-material lengths (M, H, W) float64;
    output: five (H, W) float64 images, the (P, H, W) float32 copy on the host and the PNG pixels.
    """
    cam = scene.camera if camera is None else camera
    hw = cam.height * cam.width
    P = len(scene.objects)
    M = len({_material_key(o.material) for o in scene.objects}) + int(scene.output.air)
    r = 4 * P * hw * 4 + hw * 4
    p = M * hw * (4 + 8)
    o = 5 * hw * 8 + P * hw * 4 + hw * 2
    return {"rasterize": r, "physics": p, "output": o, "total": r + p + o}
