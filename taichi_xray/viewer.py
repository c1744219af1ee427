"""Interactive viewer: ``taichi-xray view SCENE`` (Taichi GGUI).

One window, three columns: the live X-ray image (left, one screen pixel per
detector pixel), a 3D overview (middle: the meshes in per-object colours, the
X-ray source, the beam frustum and the detector as lines) and the controls
(right: C-arm angles and source-detector distance, kVp and filtration,
display window/level, log/linear, noise, per-object visibility and attenuation
scale, save; for scenes with an imaging stage, one switch per stage the scene
has: focal spot, heel effect, falloff, scatter, detector blur, and the detector
model's noise and seed instead of the viewer's Poisson noise). Mouse and keys are handled by :mod:`taichi_xray.viewer_state`
(see ``KEY_HELP`` there).

Work per frame is kept to what changed (:class:`XrayPipeline`): the meshes are
re-rasterized only when the camera changes, the per-material path lengths are
re-weighted only when visibility or attenuation scales change, the
Beer-Lambert kernel runs only when the spectrum or the lengths change, and the
display mapping (a Taichi kernel into the window image) only when the image or
window/level change. Arrays stay torch tensors on the kernels' device; on Vulkan, Metal and
OpenGL (:func:`taichi_xray.runtime.resident`) the path lengths of a mesh scene stay a
``ti.ndarray`` on the device and only the Beer-Lambert sums come back to the host (see
:class:`XrayPipeline` and docs/backends.md).

Headless: ``taichi-xray view SCENE --offscreen --frames N --out DIR`` renders
a scripted camera path without showing a window (``ti.ui.Window(...,
show_window=False)``) and writes ``xray_NNNN.png`` (the X-ray pane as GGUI
drew it), ``xray_NNNN.P.txt`` (projection matrix), optionally
``xray_NNNN.npy`` (float image) and ``window_NNNN.png`` (whole window), and
``frames.json`` (angles and frame times).

GGUI needs Vulkan even when the kernels run on the CPU or CUDA. Without it the
command prints one line naming the packages to install and exits with status 3.
"""
# (no "from __future__ import annotations": this module defines Taichi kernels)

import atexit
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
import weakref
from pathlib import Path
from typing import Optional

import numpy as np
import taichi as ti
import torch

from . import runtime
from .kernels import buffers as kb
from .viewer_state import (DISPLAY_KINDS, IMAGING_STAGES, KEY_HELP, KVP_RANGE, FILTER_MAX_MM, SCALE_RANGE,
                           ViewerState, camera_path, display_quantity, unique_stem)

__all__ = ["XrayPipeline", "Viewer", "vulkan_status", "VulkanUnavailable", "VULKAN_HINT", "run_offscreen",
           "add_view_subparser", "main_view", "main"]

VULKAN_HINT = ("taichi-xray view needs Vulkan for its window (Taichi GGUI), and none is available here: "
               "install a Vulkan driver and loader (Debian/Ubuntu: apt-get install mesa-vulkan-drivers "
               "libvulkan1), or render without a window: taichi-xray render SCENE -o image.png")
EXIT_NO_VULKAN = 3
CONTROLS_PX = 330  # width of the controls column
MIN_WINDOW_H = 720


class VulkanUnavailable(RuntimeError):
    """GGUI cannot start: no Vulkan loader or driver."""


def vulkan_status() -> tuple:
    """(available, reason). Checks that Taichi finds a Vulkan instance (the loader and a
    driver); it does not open a window."""
    if os.environ.get("TAICHI_XRAY_NO_VULKAN"):  # lets tests and users force the fallback
        return False, "TAICHI_XRAY_NO_VULKAN is set"
    try:
        from taichi.lang.misc import is_arch_supported

        ok = bool(is_arch_supported(ti.vulkan))
    except Exception as exc:  # pragma: no cover - Taichi internals
        return False, f"{type(exc).__name__}: {exc}"
    return ok, "" if ok else "Taichi found no Vulkan instance (no libvulkan1 or no driver)"


# imgui (inside Taichi GGUI) reads and writes ``imgui.ini`` in the working directory: when a
# window is destroyed (at the latest at exit) and, in a shown window, a few seconds after a panel
# moved. Taichi 1.7.4 has no switch for it (imgui's io.IniFilename is not exposed), so every GGUI
# call that can touch the file runs with the working directory in a private temporary folder
# (removed at exit), and the user's directory never gets an imgui.ini.
_GUI_DIR: dict = {}
_LIVE_VIEWERS = weakref.WeakSet()


def _gui_dir() -> str:
    d = _GUI_DIR.get("path")
    if d is None or not os.path.isdir(d):
        d = _GUI_DIR["path"] = tempfile.mkdtemp(prefix="taichi_xray_gui_")
    return d


@contextlib.contextmanager
def _gui_cwd():
    """Run GGUI calls that may read or write imgui.ini in the private folder (cwd restored after)."""
    try:
        old = os.getcwd()
    except OSError:  # the working directory was removed; nothing to protect
        old = None
    os.chdir(_gui_dir())
    try:
        yield
    finally:
        if old is not None:
            os.chdir(old)


@atexit.register
def _close_viewers():  # before Taichi destroys the windows (and imgui saves) in the user's directory
    for v in list(_LIVE_VIEWERS):
        v.close()
    d = _GUI_DIR.pop("path", None)
    if d:
        shutil.rmtree(d, ignore_errors=True)


def _make_window(title: str, res, show: bool):
    ok, why = vulkan_status()
    if not ok:
        raise VulkanUnavailable(f"{VULKAN_HINT} ({why})")
    try:
        return ti.ui.Window(title, res, vsync=False, show_window=show)
    except RuntimeError as exc:  # e.g. "Vulkan must be available for GGUI", no display for a shown window
        msg = str(exc)
        if "vulkan" in msg.lower():
            raise VulkanUnavailable(f"{VULKAN_HINT} ({msg})") from None
        raise RuntimeError(f"cannot open the viewer window: {msg}"
                           + ("" if not show else " (no display? try --offscreen)")) from None


# ----------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------
@ti.kernel
def _pane_kernel(img: ti.types.ndarray(), out: ti.template(), x0: ti.i32, top: ti.i32, lo: ti.f32,
                 scale: ti.f32, invert: ti.i32):
    """Window/level an (H, W) image into out[x0 + c, top - r] as grey uint8 (round half up)."""
    for r, c in ti.ndrange(img.shape[0], img.shape[1]):
        v = (ti.cast(img[r, c], ti.f32) - lo) * scale
        if v != v:  # NaN
            v = 0.0
        v = ti.min(ti.max(v, 0.0), 255.0)
        if invert:
            v = 255.0 - v
        u = ti.cast(ti.floor(v + 0.5), ti.u8)
        out[x0 + c, top - r] = ti.Vector([u, u, u])


# ----------------------------------------------------------------------------------------
# pipeline
# ----------------------------------------------------------------------------------------
class XrayPipeline:
    """The viewer's view of the :class:`~taichi_xray.pipeline.Pipeline`, with per-stage caching.

    The meshes are re-rasterized only when the camera, the visibility or the attenuation
    scales change (visibility and scales are face weights of the rasterizer) or the focal
    spot is switched, the Beer-Lambert kernel runs only when the spectrum, the path lengths
    or the heel effect change, the imaging stage (scenes with ``[source]``, a detector model
    or ``[scatter]``: :meth:`Pipeline.output_image`) only when Beer-Lambert ran, a stage
    switch changed or the detector noise (on/off, seed) changed, and the display mapping
    only when the image or window/level change.

    Where the arrays live: torch tensors on the kernels' device (CPU, CUDA); with device
    residency (``resident``: :func:`taichi_xray.runtime.resident` and a mesh scene,
    :meth:`Pipeline.resident_ok`) the rasterizer, its path lengths ``L_all`` and the
    Beer-Lambert stage stay on the device (``ti.ndarray``): a spectrum change re-runs
    Beer-Lambert on the kept ndarray (with the heel effect's weights too) and downloads only its
    sums (B, I, H, W). What needs the path lengths on the host (the scatter stage's
    water-equivalent thickness, :attr:`L`) downloads ``L_all`` once per rasterization
    (:meth:`host_L_all`; counted in ``n_L_downloads``).

    Arrays: ``L_all`` (I, C, H, W) per-material path lengths (mm, incl. air) of every rasterizer
    instance (one per focal-spot sample; torch, or a ``ti.ndarray`` when ``resident``), ``L``
    (C, H, W) those of the first instance (torch, downloaded when resident), ``T`` (H', W')
    transmission (H' = H / binning), ``image`` (H', W') the displayed quantity (torch, host or
    CUDA). ``I0`` is the unattenuated signal. ``timings`` (ms) of the last :meth:`update`:
    rasterize, physics, display (0 when a stage was skipped), and imaging when the imaging
    stage ran.
    """

    def __init__(self, scene):
        from .render import scene_pipeline

        self.scene = scene
        self.backend = runtime.ensure_init()
        self.device = runtime.torch_device()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # mesh warnings were given when the scene was loaded
            self.pipe = scene_pipeline(scene)
        self.imaging0 = self.pipe.imaging  # the scene's own imaging stage; switches start from it
        self.imaging_mode = bool(self.imaging0.active)
        self.imaging_noise = self.imaging0.noise is not None  # the detector model's noise replaces ours
        self.resident = bool(runtime.resident() and self.pipe.resident_ok())
        self.V = self.pipe.pack_vertices()
        self._keys = {}
        self._spectra = {}
        self.camera = None
        self._cam = None
        self.T = self.image = self.raw = None
        self._L = None  # kb.HostCopy of L_all: resident, downloaded on demand once per rasterization
        self.n_L_downloads = 0
        self._reading = None
        self.I0 = 1.0
        self.window = (0.0, 1.0)
        self.timings = {"rasterize": 0.0, "physics": 0.0, "display": 0.0}
        self.last_timings = dict(self.timings)  # of the last update that recomputed something
        self.n_rasterized = self.n_physics = self.n_imaging = 0

    @property
    def L(self) -> Optional[torch.Tensor]:
        """(C, H, W) path lengths (mm) of the first rasterizer instance, torch (resident: from the
        one download of :meth:`host_L_all`); None before the first :meth:`update`."""
        L = self.host_L_all()
        return None if L is None else L[0]

    @property
    def L_all(self):
        """(I, C, H, W) path lengths as the rasterizer keeps them (torch, or resident a ``ti.ndarray``)."""
        return None if self._L is None else self._L.dev

    def host_L_all(self) -> Optional[torch.Tensor]:
        """``L_all`` (I, C, H, W) as a torch tensor: itself when not resident, else its host copy,
        downloaded at the first call after a rasterization and kept until the next one."""
        if self._L is None:
            return None
        n = self._L.downloads
        L = self._L.host()
        self.n_L_downloads += self._L.downloads - n
        return L

    def _scatter_L(self):
        """What ``Pipeline._last_L`` is given before the imaging stage: the host path lengths when
        the scatter stage reads them (its water-equivalent thickness), else ``L_all`` as it is."""
        return self.host_L_all() if self.pipe.imaging.scatter is not None else self.L_all

    def _sync(self):
        ti.sync()
        if self.device == "cuda":
            torch.cuda.synchronize()

    def imaging_for(self, state: ViewerState, camera=None):
        """The scene's :class:`~taichi_xray.physics.imaging.Imaging` with the stages switched off in
        ``state`` removed (focal_spot=None, heel=False, falloff=False, scatter=None, a detector
        model with mtf=None), the heel effect at the state's kVp, the detector pitch of
        ``camera`` (a resized detector, as :meth:`Scene.with_overrides`) and the state's noise seed."""
        import dataclasses

        im, on = self.imaging0, state.stages
        kw = {}
        if not on.get("focal_spot", True):
            kw["focal_spot"] = None
        if not on.get("heel", True):
            kw["heel"] = False
        elif im.heel and state.kvp is not None:
            kw["kvp"] = float(state.kvp)
        if not on.get("falloff", True):
            kw["falloff"] = False
        if not on.get("scatter", True):
            kw["scatter"] = None
        det = im.detector
        if det is not None:
            dk = {}
            if not on.get("blur", True):
                dk["mtf"] = None
            pitch = getattr(camera, "pixel_spacing", None)
            if getattr(self.scene, "detector_pitch_from_camera", False) and pitch is not None and \
                    float(pitch) != float(det.pixel_pitch_mm):
                dk["pixel_pitch_mm"] = float(pitch)
            if dk:
                kw["detector"] = dataclasses.replace(det, **dk)
        if self.imaging_noise and int(state.seed) != int(im.seed):
            kw["seed"] = int(state.seed)
        return dataclasses.replace(im, **kw) if kw else im

    def update(self, state: ViewerState) -> set:
        """Recompute what the state's changes need; returns the stages that ran
        ({"rasterize", "physics", "imaging", "noise", "window"} subset)."""
        ran = set()
        pipe = self.pipe
        self.timings = {"rasterize": 0.0, "physics": 0.0, "display": 0.0}
        gk, mk, sk, nk = state.geometry_key(), state.material_key(), state.spectrum_key(), state.noise_key()
        t0 = time.perf_counter()
        if self._keys.get("camera") != gk:
            self._cam = state.camera(self.scene.camera_spec)
            self._keys["camera"] = gk
        rk, pk = (gk, mk), sk
        if self.imaging_mode:
            stages = state.imaging_key()
            heel_kvp = state.kvp if (self.imaging0.heel and state.stages.get("heel")) else None
            ik = (stages, heel_kvp, self._cam.pixel_spacing, int(state.seed) if self.imaging_noise else None)
            if self._keys.get("imaging") != ik:
                pipe.set_imaging(self.imaging_for(state, self._cam))  # re-sets the cameras (sources)
                self._keys["imaging"] = ik
            rk = (gk, mk, bool(state.stages.get("focal_spot")))  # the focal spot's sources are rasterized
            pk = (sk, bool(pipe.imaging.heel))  # the heel effect is in the Beer-Lambert weights
        if self._keys.get("raster") != rk:
            pipe.set_cameras(self._cam)
            pipe.set_object_weights(visible=state.visible, mu_scale=state.mu_scale)
            st = pipe.project(self.V, resident=self.resident)
            self._L = kb.HostCopy(st.L, self.device)  # (I, C, H, W): every source sample of a focal spot
            pipe._last_L = st.L  # as Pipeline.render: the scatter stage reads it
            self.camera = pipe.cameras[0]
            self._sync()
            self._keys["raster"] = rk
            self._keys.pop("spectrum", None)
            self.n_rasterized += 1
            ran.add("rasterize")
            self.timings["rasterize"] = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        if self._keys.get("spectrum") != pk:
            spec = self._spectra.get(sk)
            if spec is None:
                spec = state.spectrum(self.scene.spectrum_spec)
                if len(self._spectra) > 64:
                    self._spectra.clear()
                self._spectra[sk] = spec
            if spec is not pipe.spectrum:
                pipe.set_spectrum(spec)
            dev = self.device if self.resident else self.L_all.device
            _, _, self.I0 = pipe.physics_tables(pipe.physics_dtype, dev)
            if self.imaging_mode:
                # (B, I, H, W) Beer-Lambert sums of every instance; resident: on the device from the kept
                # ndarray (the heel effect's per-row weights included: one camera), one download of the sums
                self.raw = pipe.physics(self.L_all)
            elif self.resident:  # no imaging stage: one camera, one source, one instance
                self.T_clean = pipe.physics(self.L_all)[0, 0] / self.I0
            else:
                self.T_clean = pipe.physics(self.L[None])[0, 0] / self.I0
            self._sync()
            self._keys["spectrum"] = pk
            self._keys.pop("noise", None)
            self._keys.pop("imaging_out", None)
            self.n_physics += 1
            ran.add("physics")
        self.timings["physics"] = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        pipe_noise = self.imaging_noise and bool(state.noise)
        if self.imaging_mode:
            ok = (state.imaging_key(), (pipe_noise, int(state.seed)) if self.imaging_noise else None)
            if self._keys.get("imaging_out") != ok:
                pipe._last_L = self._scatter_L()
                with torch.no_grad():
                    self.T_clean = pipe.output_image(self.raw, "transmission", noise=pipe_noise)[0]
                self._reading = None
                self._sync()
                self._keys["imaging_out"] = ok
                self._keys.pop("noise", None)
                self.n_imaging += 1
                ran.add("imaging")
        if self._keys.get("noise") != nk:
            if state.noise and not self.imaging_noise:  # the viewer's Poisson noise on the transmission
                g = torch.Generator(device=self.device).manual_seed(int(state.seed))
                n0 = float(state.photons)
                self.T = torch.poisson(self.T_clean.clamp(min=0) * n0, generator=g) / n0
            else:
                self.T = self.T_clean
            self._keys["noise"] = nk
            self._keys.pop("kind", None)
            ran.add("noise")
        if "imaging" in ran or (self.imaging_mode and "noise" in ran):
            self.timings["imaging"] = (time.perf_counter() - t0) * 1e3
        else:
            self.timings["physics"] += (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        if self._keys.get("kind") != state.kind:
            viewer_noise = state.noise and not self.imaging_noise
            if self.imaging_mode and state.kind == "intensity" and not viewer_noise:
                self.image = self.reading(pipe_noise)  # the detector reading (ADU with a detector model)
            else:
                floor = 1e-7 if pipe_noise else 0.5 / state.photons if viewer_noise else None
                self.image = display_quantity(self.T, state.kind, self.I0, floor)
            self._keys["kind"] = state.kind
            self._keys.pop("auto", None)
        if state.auto_window and self._keys.get("auto") is None:
            state.window = self.robust_window()
            self._keys["auto"] = True
            ran.add("window")
        if not state.auto_window:
            self._keys.pop("auto", None)
        self.window = tuple(state.window)
        self.timings["display"] = (time.perf_counter() - t0) * 1e3
        if ran:
            self.last_timings = dict(self.timings)
        return ran

    def reading(self, noise: bool) -> torch.Tensor:
        """(H', W') the imaging stage's intensity output (:meth:`Pipeline.output_image`, kind
        "intensity") for the current Beer-Lambert sums; cached until the imaging stage reruns."""
        if self._reading is None:
            self.pipe._last_L = self._scatter_L()
            with torch.no_grad():
                self._reading = self.pipe.output_image(self.raw, "intensity", noise=noise)[0]
        return self._reading

    def robust_window(self, percentiles=(0.5, 99.5)) -> tuple:
        """(lo, hi) at the percentiles of the finite pixels of ``image`` (as imageio.robust_window)."""
        x = self.image.reshape(-1).to(torch.float64)
        x = x[torch.isfinite(x)]
        if x.numel() == 0:
            return (0.0, 1.0)
        if x.device.type == "cpu":  # numpy's percentile is much faster than torch.quantile on the CPU
            lo, hi = (float(v) for v in np.percentile(x.numpy(), percentiles))
        else:
            q = torch.quantile(x, torch.tensor([p / 100.0 for p in percentiles], dtype=torch.float64,
                                               device=x.device))
            lo, hi = float(q[0]), float(q[1])
        return (lo, hi if hi > lo else lo + 1e-6)

    def pixels(self, invert: bool = False) -> np.ndarray:
        """The displayed image as uint8 (H, W), numpy (same mapping as the window)."""
        from .viewer_state import window_to_uint8

        return window_to_uint8(self.image.detach().cpu().numpy(), *self.window, invert=invert)


# ----------------------------------------------------------------------------------------
# 3D overview
# ----------------------------------------------------------------------------------------
_COLOURS = {
    "bone": (0.93, 0.89, 0.76), "cortical_bone": (0.93, 0.89, 0.76), "trabecular_bone": (0.85, 0.72, 0.55),
    "lung": (0.95, 0.6, 0.65), "soft_tissue": (0.8, 0.55, 0.45), "muscle": (0.75, 0.3, 0.3),
    "blood": (0.7, 0.1, 0.15), "adipose": (0.95, 0.85, 0.5), "fat": (0.95, 0.85, 0.5), "air": (0.6, 0.8, 0.95),
    "water": (0.4, 0.6, 0.9), "liver": (0.55, 0.25, 0.2), "iodine": (0.3, 0.9, 0.4),
}
_PALETTE = [(0.35, 0.7, 0.9), (0.9, 0.6, 0.2), (0.5, 0.85, 0.4), (0.8, 0.45, 0.85), (0.95, 0.85, 0.3),
            (0.4, 0.5, 0.95), (0.9, 0.4, 0.5)]


def object_colours(scene) -> list:
    """An RGB triple per object: by material name (bone ivory, lung pink, ...), else a palette."""
    out = []
    for i, o in enumerate(scene.objects):
        name = (o.material_name or "").lower()
        c = _COLOURS.get(name)
        if c is None:
            c = next((v for k, v in _COLOURS.items() if k in name), _PALETTE[i % len(_PALETTE)])
        out.append(c)
    return out


def _box_edges(corners) -> np.ndarray:
    """(24, 3) segment end points of the 12 edges of a box given by its 8 corners (any order of
    the three axes' lo/hi, as Volume.corners lists them)."""
    c = np.asarray(corners, dtype=np.float64).reshape(8, 3)
    seg = []
    for i in range(8):
        for j in range(i + 1, 8):
            if bin(i ^ j).count("1") == 1:  # corners i, j differ in one axis: an edge
                seg += [c[i], c[j]]
    return np.asarray(seg, np.float32)


def frustum_lines(camera, isocenter) -> np.ndarray:
    """(18, 3) float32 segment end points (mm): 4 source->detector corner rays, the 4 detector
    edges and the central ray source->isocentre. Needs the camera's pixel_spacing."""
    D = camera.detector_distance
    if D is None:
        D = float(np.linalg.norm(np.asarray(isocenter) - camera.source)) * 1.2
    S = camera.source
    W, H = camera.width, camera.height
    corners = []
    for u, v in ((-0.5, -0.5), (W - 0.5, -0.5), (W - 0.5, H - 0.5), (-0.5, H - 0.5)):
        corners.append(S + D * (camera.M_inv @ np.array([u, v, 1.0])))
    seg = []
    for c in corners:
        seg += [S, c]
    for i in range(4):
        seg += [corners[i], corners[(i + 1) % 4]]
    seg += [S, np.asarray(isocenter, dtype=np.float64)]
    return np.asarray(seg, dtype=np.float32)


_LINE_COLOURS = np.array([(1.0, 0.85, 0.2)] * 8 + [(0.2, 0.9, 1.0)] * 8 + [(1.0, 0.3, 0.3)] * 2, dtype=np.float32)


class Overview:
    """GGUI buffers of the 3D overview: all meshes in one vertex buffer with per-vertex
    colours; leaf objects solid, objects with children (the body) as wireframe."""

    def __init__(self, scene):
        P = len(scene.objects)
        has_child = [False] * P
        for q, p in enumerate(scene.parents):
            if p >= 0:
                has_child[p] = True
        self.container = has_child
        Vs, Fs, Cs, self.face_ranges, off = [], [], [], [], 0
        cols = object_colours(scene)
        nf = 0
        for o, c in zip(scene.objects, cols):
            m = o.mesh.boundary() if hasattr(o.mesh, "boundary") else o.mesh  # a tetrahedral mesh: its surface
            V = np.asarray(m.vertices, dtype=np.float32)
            F = np.asarray(m.faces, dtype=np.int64)
            Vs.append(V)
            Fs.append(F + off)
            Cs.append(np.tile(np.asarray(c, np.float32), (len(V), 1)))
            self.face_ranges.append((nf, nf + len(F)))
            off += len(V)
            nf += len(F)
        V, self.F, C = np.concatenate(Vs), np.concatenate(Fs), np.concatenate(Cs)
        N = np.zeros_like(V)
        tri = V[self.F]
        fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        for k in range(3):
            np.add.at(N, self.F[:, k], fn)
        N /= np.maximum(np.linalg.norm(N, axis=1, keepdims=True), 1e-12)
        self.vertices = ti.Vector.field(3, ti.f32, shape=len(V))
        self.normals = ti.Vector.field(3, ti.f32, shape=len(V))
        self.colours = ti.Vector.field(3, ti.f32, shape=len(V))
        self.vertices.from_numpy(V)
        self.normals.from_numpy(N.astype(np.float32))
        self.colours.from_numpy(C)
        self.solid = ti.field(ti.i32, shape=max(3 * nf, 3))
        self.wire = ti.field(ti.i32, shape=max(3 * nf, 3))
        self.n_solid = self.n_wire = 0
        # the beam's lines, then the edges of every CT volume's box (white)
        self.box_lines = np.concatenate([_box_edges(v.volume.corners) for v in getattr(scene, "volumes", [])] or
                                        [np.zeros((0, 3), np.float32)]).astype(np.float32)
        n_lines = 18 + len(self.box_lines)
        self.lines = ti.Vector.field(3, ti.f32, shape=n_lines)
        self.line_colours = ti.Vector.field(3, ti.f32, shape=n_lines)
        self.line_colours.from_numpy(np.concatenate([_LINE_COLOURS, np.ones((len(self.box_lines), 3), np.float32)]))
        lo, hi = V.min(0), V.max(0)
        self.mesh_centre = 0.5 * (lo + hi)
        self._vis = None

    def set_visible(self, visible) -> None:
        key = tuple(bool(v) for v in visible)
        if key == self._vis:
            return
        self._vis = key
        solid, wire = [], []
        for p, (a, b) in enumerate(self.face_ranges):
            if visible[p]:
                (wire if self.container[p] else solid).append(self.F[a:b])
        for name, parts in (("solid", solid), ("wire", wire)):
            idx = np.concatenate(parts).reshape(-1).astype(np.int32) if parts else np.zeros(0, np.int32)
            buf = np.zeros(getattr(self, name).shape[0], np.int32)
            buf[: len(idx)] = idx
            getattr(self, name).from_numpy(buf)
            setattr(self, "n_" + name, len(idx))


# ----------------------------------------------------------------------------------------
# viewer
# ----------------------------------------------------------------------------------------
def _to_field_layout(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) row-major image -> (W, H, 3) GGUI layout ([x, y], y up)."""
    return np.ascontiguousarray(rgb[::-1].transpose(1, 0, 2))


def _from_window_buffer(buf: np.ndarray) -> np.ndarray:
    """GGUI image buffer (W, H, 4) float in [0, 1] -> (H, W, 3) uint8 row-major."""
    return np.rint(np.clip(buf[:, :, :3], 0, 1) * 255).astype(np.uint8).transpose(1, 0, 2)[::-1]


class Viewer:
    """The GGUI window: X-ray pane, 3D overview, controls.

    ``show=False`` keeps the window hidden (off-screen rendering). ``save_dir`` is
    where the save key writes (default: the working directory).
    """

    def __init__(self, scene, size=None, show: bool = True, save_dir=None, controls: bool = True,
                 lao=None, cran=None, kvp=None):
        self.scene = scene
        self.state = ViewerState.from_scene(scene, size=size, lao=lao, cran=cran, kvp=kvp)
        W, H = self.state.size
        self.pane = (W, H)
        self.win_h = max(H, MIN_WINDOW_H if controls else H)
        self.view3d = self.win_h  # square overview pane
        self.controls = controls
        self.win_w = W + self.view3d + (CONTROLS_PX if controls else 0)
        self._closed = False
        with _gui_cwd():
            self.window = _make_window(f"taichi-xray view: {scene.name}", (self.win_w, self.win_h), show)
        _LIVE_VIEWERS.add(self)
        self.show = show
        self.pipeline = XrayPipeline(scene)
        self.overview = Overview(scene)
        self.canvas = self.window.get_canvas()
        self.scene3d = self.window.get_scene()
        self.cam3d = ti.ui.Camera()
        self.cam3d.projection_mode(ti.ui.ProjectionMode.Orthogonal)
        self.image = ti.Vector.field(3, ti.u8, shape=(self.win_w, self.win_h))
        bg = np.full((self.win_h, self.win_w, 3), 24, np.uint8)
        bg[:, W:W + self.view3d] = 40
        self.image.from_numpy(_to_field_layout(bg))
        self.save_dir = Path(save_dir) if save_dir is not None else Path.cwd()
        self.frame_ms = 0.0
        self.message = ""
        self._drag = None
        self._prev_cursor = None
        self._disp_key = None
        iso = scene.camera_spec.isocenter if scene.camera_spec.kind == "c_arm" else self.overview.mesh_centre
        self.isocenter = np.asarray(iso, dtype=np.float64)
        self.saved = []

    # -------------------------------------------------------------- drawing
    def _update_xray(self) -> set:
        st = self.state
        ran = self.pipeline.update(st)
        key = (id(self.pipeline.image), tuple(self.pipeline.window), st.invert)
        if key != self._disp_key:
            t0 = time.perf_counter()
            lo, hi = self.pipeline.window
            scale = 255.0 / (hi - lo) if hi > lo else 0.0
            img = self.pipeline.image.contiguous()
            _pane_kernel(img, self.image, 0, self.win_h - 1, float(lo), float(scale), int(st.invert))
            dt = (time.perf_counter() - t0) * 1e3
            self.pipeline.timings["display"] += dt
            self.pipeline.last_timings["display"] = self.pipeline.timings["display"]
            self._disp_key = key
            ran.add("display")
        return ran

    def _draw_3d(self):
        st, ov = self.state, self.overview
        cam = self.pipeline.camera
        ov.set_visible(st.visible)
        seg = frustum_lines(cam, self.isocenter)
        ov.lines.from_numpy(np.concatenate([seg, ov.box_lines]) if len(ov.box_lines) else seg)
        pts = np.concatenate([seg, ov.vertices.to_numpy()[:: max(1, ov.vertices.shape[0] // 2000)]])
        r = float(np.max(np.linalg.norm(pts - self.isocenter, axis=1))) * 1.05 / max(st.zoom, 1e-3)
        az, el = np.deg2rad(st.orbit_az), np.deg2rad(st.orbit_el)
        d = np.array([np.sin(az) * np.cos(el), -np.cos(az) * np.cos(el), np.sin(el)])
        pos = self.isocenter + 4.0 * r * d
        c = self.cam3d
        c.position(*pos)
        c.lookat(*self.isocenter)
        c.up(0.0, 0.0, 1.0)
        # orthographic frustum that puts the sphere of radius r into the middle pane
        x0 = self.pane[0] / self.win_w
        x1 = (self.pane[0] + self.view3d) / self.win_w
        s = 2.0 * r / (x1 - x0)
        c.left(-r - x0 * s)
        c.right(r + (1.0 - x1) * s)
        c.top(r)
        c.bottom(-r)
        c.z_near(r)
        c.z_far(8.0 * r)
        sc = self.scene3d
        sc.set_camera(c)
        sc.ambient_light((0.35, 0.35, 0.35))
        sc.point_light(tuple(pos), (0.9, 0.9, 0.9))
        if ov.n_solid:
            sc.mesh(ov.vertices, ov.solid, ov.normals, per_vertex_color=ov.colours, two_sided=True,
                    index_count=ov.n_solid)
        if ov.n_wire:
            sc.mesh(ov.vertices, ov.wire, ov.normals, per_vertex_color=ov.colours, two_sided=True,
                    index_count=ov.n_wire, show_wireframe=True)
        sc.lines(ov.lines, width=2.0, per_vertex_color=ov.line_colours)
        self.canvas.scene(sc)

    def _gui(self):
        st, pl = self.state, self.pipeline
        gui = self.window.get_gui()
        fx = (self.pane[0] + self.view3d) / self.win_w
        fw = 1.0 - fx
        rt = pl.last_timings
        img_ms = f" | img {rt['imaging']:.1f}" if "imaging" in rt else ""
        # scenes with imaging stages get a taller source/detector panel (one checkbox per stage)
        ex = 0.1 if (st.stages or st.imaging_noise) else 0.0
        with gui.sub_window("C-arm", fx, 0.0, fw, 0.2) as g:
            g.text(f"frame {self.frame_ms:.1f} ms ({1000.0 / max(self.frame_ms, 1e-3):.1f} fps)")
            g.text(f"raster {rt['rasterize']:.1f} | phys {rt['physics']:.1f}{img_ms} | disp {rt['display']:.1f} ms")
            if st.c_arm:
                self._slider(g, "LAO(+)/RAO(-)", "lao", st.lao, -180.0, 180.0)
                self._slider(g, "CRAN(+)/CAUD(-)", "cran", st.cran, -89.0, 89.0)
                self._slider(g, "SDD mm", "sdd", st.sdd, st.sid + 1.0, max(2.0 * st.sid, st.sdd * 1.5))
            else:
                g.text("raw-matrix camera: angles fixed")
            if g.button("reset (r)"):
                st.reset()
        with gui.sub_window("Spectrum / noise / imaging", fx, 0.2, fw, 0.22 + ex) as g:
            if st.kvp is not None:
                v = g.slider_int("kVp", int(round(st.kvp)), *KVP_RANGE)
                if v != int(round(st.kvp)):
                    st.set_param("kvp", v)
                for f in list(st.filtration):
                    self._slider(g, f"{f} filter mm", f"filter:{f}", st.filtration[f], 0.0, FILTER_MAX_MM.get(f, 10.0))
            else:
                g.text("spectrum from the scene (not a tungsten tube)")
            if st.imaging_noise:  # one noise control: the detector model's noise, seeded
                nz = g.checkbox("detector noise (n)", st.noise)
                if nz != st.noise:
                    st.set_param("noise", nz)
                sd = g.slider_int("noise seed", int(min(st.seed, 999)), 0, 999)
                if sd != int(min(st.seed, 999)):
                    st.set_param("seed", sd)
            else:
                nz = g.checkbox("Poisson noise (n)", st.noise)
                if nz != st.noise:
                    st.set_param("noise", nz)
                lg = g.slider_float("log10 photons/px", math.log10(st.photons), 2.0, 7.0)
                if abs(lg - math.log10(st.photons)) > 1e-4:
                    st.set_param("photons", 10.0 ** lg)
            for name, key, text in IMAGING_STAGES:
                if name in st.stages:
                    on = g.checkbox(f"{text} ({key})", st.stages[name])
                    if on != st.stages[name]:
                        st.set_param(name, on)
        with gui.sub_window("Display", fx, 0.42 + ex, fw, 0.3 - ex / 2) as g:
            g.text(f"{st.kind} ({'log' if st.kind == 'line_integral' else 'linear'}; l toggles)")
            if g.button("log / linear (l)"):
                st.toggle_log()
            a = g.checkbox("auto window (a)", st.auto_window)
            if a != st.auto_window:
                st.auto_window = a
            lo, hi = st.window
            span = max(hi - lo, 1e-6)
            self._slider(g, "window lo", "window_lo", lo, lo - span, hi)
            self._slider(g, "window hi", "window_hi", hi, lo, hi + span)
            inv = g.checkbox("invert (i)", st.invert)
            if inv != st.invert:
                st.set_param("invert", inv)
            if g.button("save PNG+NPY+P (s)"):
                self.save()
            if self.message:
                g.text(self.message)
            if st.stages or st.imaging_noise:
                g.text(st.stages_text())
        with gui.sub_window("Objects: visible / mu scale", fx, 0.72 + ex / 2, fw, 0.28 - ex / 2) as g:
            for i, name in enumerate(st.names):
                v = g.checkbox(f"{name}##v{i}", st.visible[i])
                if v != st.visible[i]:
                    st.set_param("visible", v, i)
                self._slider(g, f"x mu##s{i}", "mu_scale", st.mu_scale[i], *SCALE_RANGE, index=i)

    def _slider(self, g, label, name, value, lo, hi, index=None):
        v = g.slider_float(label, float(value), float(lo), float(hi))
        if abs(v - value) > 1e-6 * max(1.0, abs(value)):
            try:
                self.state.set_param(name, v, index)
            except (ValueError, KeyError) as exc:
                self.message = str(exc)[:60]

    # -------------------------------------------------------------- input
    def _input(self):
        w, st = self.window, self.state
        for e in w.get_events(ti.ui.PRESS):
            k = e.key
            if k in (ti.ui.LMB, ti.ui.RMB, ti.ui.MMB):
                continue
            name = {ti.ui.LEFT: "left", ti.ui.RIGHT: "right", ti.ui.UP: "up", ti.ui.DOWN: "down",
                    ti.ui.ESCAPE: "escape"}.get(k, k)
            act = st.handle_key(str(name), shift=w.is_pressed(ti.ui.SHIFT))
            if act == "save":
                self.save()
            elif act == "quit":
                w.running = False
        x, y = w.get_cursor_pos()
        px, py = x * self.win_w, (1.0 - y) * self.win_h  # screen pixels, rows down
        lmb, rmb = w.is_pressed(ti.ui.LMB), w.is_pressed(ti.ui.RMB)
        if not (lmb or rmb):
            self._drag = None
        elif self._drag is None:
            if px < self.pane[0] and py < self.pane[1]:
                self._drag = "level" if rmb else "carm"
            elif px < self.pane[0] + self.view3d:
                self._drag = "orbit"
            else:
                self._drag = "gui"
        elif self._prev_cursor is not None:
            dx, dy = px - self._prev_cursor[0], py - self._prev_cursor[1]
            if dx or dy:
                if self._drag == "carm":
                    st.drag(dx, dy, self.pane[0])
                elif self._drag == "level":
                    st.level_drag(dx, dy, self.pane[0])
                elif self._drag == "orbit":
                    st.orbit(dx, dy, self.view3d)
        self._prev_cursor = (px, py)

    # -------------------------------------------------------------- frame
    def frame(self, interactive: bool = True) -> set:
        """One frame: input (interactive), pipeline update, drawing. Returns the stages that ran."""
        t0 = time.perf_counter()
        if interactive:
            self._input()
        ran = self._update_xray()
        self.canvas.set_image(self.image)
        self._draw_3d()
        if self.controls and interactive:  # GGUI draws imgui only in show(): not off-screen
            self._gui()
        return ran, t0

    def finish_frame(self, t0):
        self.frame_ms = (time.perf_counter() - t0) * 1e3

    def run(self):
        print(KEY_HELP, file=sys.stderr)
        try:
            while self.window.running:
                _, t0 = self.frame()
                with _gui_cwd():  # imgui may save its settings during a frame
                    self.window.show()
                self.finish_frame(t0)
        finally:
            self.close()

    def close(self) -> None:
        """Destroy the window (imgui's settings go to a private folder, not the working directory)."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        _LIVE_VIEWERS.discard(self)
        with _gui_cwd():
            self.window.destroy()

    def __del__(self):
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def read_window(self) -> np.ndarray:
        """The whole window as drawn, (win_h, win_w, 3) uint8."""
        with _gui_cwd():  # draws the frame; imgui may touch its settings
            buf = self.window.get_image_buffer_as_numpy()
        return _from_window_buffer(buf)

    def xray_pane(self, window_rgb: Optional[np.ndarray] = None) -> np.ndarray:
        """The X-ray pane as drawn, (H, W) uint8 (the red channel of the grey pane)."""
        rgb = self.read_window() if window_rgb is None else window_rgb
        W, H = self.pane
        return rgb[:H, :W, 0].copy()

    def save(self, directory=None) -> list:
        """Save the current X-ray: PNG (as displayed), NPY (float image of the display kind)
        and the projection matrix, under a new number (never overwrites)."""
        from .imageio import save_npy, save_png, save_projection_matrix

        d = Path(directory) if directory is not None else self.save_dir
        st, pl = self.state, self.pipeline
        stem = unique_stem(d, f"{self.scene.name}_{st.label()}", (".png", ".npy", ".P.txt"))
        paths = [save_png(str(stem) + ".png", pl.pixels(st.invert)),
                 save_npy(str(stem) + ".npy", pl.image.detach().cpu().numpy()),
                 save_projection_matrix(str(stem) + ".P.txt", pl.camera.P,
                                        comment=f"scene {self.scene.label}; LAO {st.lao:g}, CRAN {st.cran:g}, "
                                                f"SDD {st.sdd:g} mm; {st.kind}, window {pl.window}"
                                                + (f"; {st.stages_text()}" if st.stages_text() else ""))]
        self.saved.append(paths)
        self.message = f"saved {Path(paths[0]).name}"
        print(f"taichi-xray view: saved {paths[0]}, {Path(paths[1]).name}, {Path(paths[2]).name}", file=sys.stderr)
        return paths


# ----------------------------------------------------------------------------------------
# off-screen
# ----------------------------------------------------------------------------------------
def run_offscreen(scene, frames: int, out, size=None, path: str = "lao", start: float = -45.0,
                  stop: float = 45.0, save_window: bool = False, save_npy: bool = False,
                  controls: bool = True, viewer: Optional[Viewer] = None, **initial) -> dict:
    """Render ``frames`` frames of a scripted camera path with a hidden window.

    Writes into ``out`` (created if missing; files are never overwritten: a folder that already
    holds ``xray_*.png`` is refused): ``xray_NNNN.png`` (the X-ray pane read back
    from the window), ``xray_NNNN.P.txt``, optionally ``xray_NNNN.npy`` and
    ``window_NNNN.png``, and ``frames.json``. Returns the summary written to frames.json
    (angles, per-frame ms with and without the read-back, mean fps).
    """
    from .imageio import save_npy as _save_npy
    from .imageio import save_png, save_projection_matrix

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is not a directory")
    out.mkdir(parents=True, exist_ok=True)  # a new folder overwrites nothing
    if any(out.glob("xray_*.png")) or (out / "frames.json").exists():
        raise FileExistsError(f"{out} already holds frames (xray_*.png / frames.json); "
                              "choose an empty --out folder (frames are never overwritten)")
    v = viewer or Viewer(scene, size=size, show=False, controls=controls, **initial)
    st = v.state
    if path in ("lao", "orbit"):
        poses = camera_path(frames, path, start + st.lao if path == "lao" else st.lao, stop + st.lao,
                            cran=st.cran)
    elif path == "cran":
        poses = camera_path(frames, "cran", start, stop, lao=st.lao)
    elif path == "still":
        poses = [(st.lao, st.cran)] * frames
    else:
        raise ValueError(f"--path must be lao, cran, orbit or still, got {path!r}")
    if not st.c_arm and path != "still":
        raise ValueError("a raw-matrix camera cannot move: use --path still")
    recs = []
    for i, (lao, cran) in enumerate(poses):
        t0 = time.perf_counter()
        if st.c_arm:
            st.lao, st.cran = lao, cran
        ran, _ = v.frame(interactive=False)
        rgb = v.read_window()  # forces GGUI to draw the frame
        ms = (time.perf_counter() - t0) * 1e3
        v.frame_ms = ms
        stem = out / f"xray_{i:04d}"
        save_png(str(stem) + ".png", v.xray_pane(rgb))
        save_projection_matrix(str(stem) + ".P.txt", v.pipeline.camera.P,
                               comment=f"scene {scene.label}; frame {i}; LAO {st.lao:g}, CRAN {st.cran:g}")
        if save_npy:
            _save_npy(str(stem) + ".npy", v.pipeline.image.detach().cpu().numpy())
        if save_window:
            _save_rgb(out / f"window_{i:04d}.png", rgb)
        recs.append({"frame": i, "lao": st.lao, "cran": st.cran, "ms": ms, "stages": sorted(ran),
                     "timings_ms": dict(v.pipeline.timings), "window": list(v.pipeline.window)})
    ms = np.array([r["ms"] for r in recs])
    summary = {"scene": str(scene.label), "size": list(v.pane), "window_size": [v.win_w, v.win_h],
               "arch": v.pipeline.backend, "path": path, "frames": recs,
               "mean_ms": float(ms.mean()), "fps": float(1000.0 / ms.mean()),
               "fps_after_first": float(1000.0 / ms[1:].mean()) if len(ms) > 1 else None}
    (out / "frames.json").write_text(json.dumps(summary, indent=1))
    return summary


def _save_rgb(path, rgb):
    from PIL import Image

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists")
    Image.fromarray(np.ascontiguousarray(rgb), mode="RGB").save(path, format="PNG")
    return path


# ----------------------------------------------------------------------------------------
# command line (the command itself is taichi_xray/cli/view.py)
# ----------------------------------------------------------------------------------------
def add_view_subparser(subparsers):
    """Add ``view`` to the ``taichi-xray`` sub-commands (see :mod:`taichi_xray.cli.view`)."""
    from .cli.view import add_parser

    return add_parser(subparsers)


def main_view(args) -> int:
    """Run ``taichi-xray view`` for parsed ``args`` (see :func:`taichi_xray.cli.view.run`)."""
    from .cli.view import run

    return run(args)


def main(argv=None) -> int:
    """``python -m taichi_xray.viewer SCENE [options]`` = ``taichi-xray view SCENE [options]``."""
    from .cli import main as cli_main

    return cli_main(["view"] + list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
