"""Rendering one sample of a dataset: :class:`SampleRenderer`.

A renderer holds, per scene, one :class:`~taichi_xray.pipeline.Pipeline` (per-material
path lengths, nesting check, Beer-Lambert) and, when masks or path-length maps are asked
for, one path-length pipeline over the objects of those groups. Both are built once (on
first use) and reused for every sample: a sample only changes their cameras, spectrum and
vertices. Pipelines run with ``deterministic=True`` (float sums in a fixed order), so
``render(index)`` returns the same bits for the same ``(seed, index)`` in any process.

Per sample (:meth:`SampleRenderer.render`):

1. parameters: :func:`~taichi_xray.datasets.sampling.draw` (attempt 0, then re-draws);
2. geometry: shape-model vertices, then the poses in file order (each about its
   group's current volume centroid unless ``centre`` is given); landmarks move along;
3. projection and nesting check (``NestingError`` / ``GeometryError`` -> re-draw, up to
   ``max_attempts``; then the sample is returned with ``failed=True`` and the error);
4. physics: noise-free ``T = I / I0`` (plus the kernel scatter estimate with ``[scatter]``);
   or Poisson counts ``Poisson(T n0) / n0``; or the
   detector model (S1, S2 from a two-row Beer-Lambert, compound-Poisson noise, MTF blur,
   electronic noise) read back as ``T = (reading - offset) / gain / S1_0``;
   line integral ``-ln(max(T, floor))`` with ``floor`` half a photon;
5. outputs: float32 image, 16-bit copy, group masks / path lengths, landmarks, P.

Device residency (:func:`taichi_xray.runtime.resident`: Vulkan, Metal, OpenGL/GLES or
``TAICHI_XRAY_RESIDENT=1``; mesh scenes, :meth:`Pipeline.resident_ok`): both pipelines project
with ``resident=True``, so the path lengths L (I, C, H, W), the counts and the slots stay
``ti.ndarray`` on the device; the nesting check reads the slots there (the P x P conflict
counts come down), Beer-Lambert runs there (:meth:`Pipeline.physics`, or the detector model's
two-row sums: one launch of the same kernel on the kept L) and only its sums come down. L itself
comes down at most once per sample, and only when the host reads it: scatter's
water-equivalent thickness. The
masks / path-length pipeline's (G, H, W) result comes down once (it is written to disk).
Elsewhere (CPU, CUDA) every array is a torch tensor on the kernels' device, as before.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .. import runtime
from ..camera import Camera
from ..kernels import buffers as kb
from ..pipeline import NestingError, Pipeline
from ..rasterize import GeometryError
from .sampling import SampleParams, check_seed, draw, parameter_names
from ._validate import Ctx as _Ctx
from ._validate import expand_objects as _expand
from .spec import DatasetSpec

__all__ = ["SampleRenderer", "SampleResult", "RETRY_ERRORS", "rotation_matrix"]

#: errors of one draw that make the sample re-drawn (then reported failed)
RETRY_ERRORS = (NestingError, GeometryError)


def rotation_matrix(deg) -> np.ndarray:
    """R = Rz @ Ry @ Rx for angles (x, y, z) in degrees (as scene-file transforms)."""
    from ..scene import _rotation

    return _rotation(np.asarray(deg, dtype=np.float64))


def _volume_centroid(parts) -> np.ndarray:
    """Volume-weighted centroid (3,) of closed meshes [(V, F), ...] (signed tetrahedra)."""
    tot_v, tot_c = 0.0, np.zeros(3)
    for V, F in parts:
        o = V.mean(0)
        a, b, c = V[F[:, 0]] - o, V[F[:, 1]] - o, V[F[:, 2]] - o
        vol = np.einsum("ij,ij->i", a, np.cross(b, c)) / 6.0
        tot_v += vol.sum()
        tot_c += ((a + b + c) / 4.0 * vol[:, None]).sum(0) + o * vol.sum()
    if abs(tot_v) < 1e-12:
        return np.mean(np.concatenate([V for V, _ in parts]), axis=0)
    return tot_c / tot_v


@dataclass
class SampleResult:
    """One sample. Images are torch tensors on the kernels' device, the rest numpy.

    image : (H, W) float32, the ``[output] kind`` (None unless float32 or uint16 is written).
    image_u16 : (H, W) int32 in [0, 65535] (None unless uint16); window : (2,) float64.
    masks : (G, H, W) bool; path_lengths : (G', H, W) float32 mm (union of each group).
    landmarks : (L, 2) float32 pixel (u, v); landmarks_depth : (L,) float32 mm (w);
    landmarks_visible : (L,) bool (w > 0 and inside the detector); landmarks_3d : (L, 3) float32 mm.
    P : (3, 4) float64. params : (Q,) float64 (:func:`parameter_names`).
    failed : every attempt raised one of :data:`RETRY_ERRORS`; ``error`` is the last message,
    and images/maps are NaN / zero / False.
    """

    index: int
    scene: int
    attempts: int
    failed: bool
    error: str
    params: np.ndarray
    image: torch.Tensor | None
    image_u16: torch.Tensor | None
    window: np.ndarray
    masks: torch.Tensor | None
    path_lengths: torch.Tensor | None
    landmarks: np.ndarray
    landmarks_depth: np.ndarray
    landmarks_visible: np.ndarray
    landmarks_3d: np.ndarray
    P: np.ndarray


class _SceneState:
    """Everything a renderer keeps for one scene."""

    def __init__(self, spec: DatasetSpec, s: int):
        self.scene = sc = spec.scenes[s]
        ctx = _Ctx(spec.label, f"scene {spec.scene_paths[s]}")
        names = sc.names
        self.index = {n: i for i, n in enumerate(names)}
        self.parents = sc.parents
        self.faces = [np.asarray(o.mesh.faces) for o in sc.objects]
        self.rest = [np.array(o.mesh.vertices, dtype=np.float64) for o in sc.objects]  # writable copies
        self.shape_models = {self.index[o]: sh.model for o, sh in spec.shapes.items()}
        self.base = [self.shape_models[i].mean.copy() if i in self.shape_models else v
                     for i, v in enumerate(self.rest)]
        # pose groups (with descendants when asked) and their roots (centroid)
        self.pose_groups = []
        for p in spec.poses:
            objs = {self.index[n] for n in _expand(ctx, "objects", p.objects, names, str(spec.scene_paths[s]))}
            if p.children:
                changed = True
                while changed:
                    add = {q for q, par in enumerate(self.parents) if par in objs and q not in objs}
                    changed = bool(add)
                    objs |= add
            objs = sorted(objs)
            self.pose_groups.append((objs, self._roots(objs)))
        # mask / path-length groups -> their roots, merged into one mesh per group: the path-length
        # pipeline's channel g is then the union path length of group g (roots do not overlap)
        self.len_groups = []
        for gname, pats in list(spec.output.masks.items()) + list(spec.output.path_lengths.items()):
            objs = sorted(self.index[n] for n in _expand(ctx, gname, pats, names, str(spec.scene_paths[s])))
            self.len_groups.append(self._roots(objs))
        self.n_masks = len(spec.output.masks)
        self.len_names = list(spec.output.masks) + list(spec.output.path_lengths)
        # landmarks: (object, position (3,) or None, vertex or None)
        self.landmarks = []
        for pt in spec.points:
            self.landmarks.append((self.index[pt.object], None if pt.position is None else np.asarray(pt.position),
                                   pt.vertex))
        if spec.pelvis is not None:
            from ..fit.landmarks import pelvis_landmarks

            parts = []
            for key in ("hip_left", "hip_right", "sacrum"):
                objs = [self.index[n] for n in _expand(ctx, key, getattr(spec.pelvis, key), names,
                                                       str(spec.scene_paths[s]))]
                parts.append(objs)
            flat = [o for objs in parts for o in objs]
            owner = np.concatenate([np.full(len(self.base[o]), o) for o in flat])
            local = np.concatenate([np.arange(len(self.base[o])) for o in flat])
            try:
                lm = pelvis_landmarks(*[np.concatenate([self.base[o] for o in objs]) for objs in parts])
            except ValueError as exc:
                raise ctx.err("pelvis", f"pelvis landmarks: {exc}") from None
            for k in lm.indices:
                self.landmarks.append((int(owner[k]), None, int(local[k])))
        self.pipe = None
        self.len_pipe = None
        self._spectra: dict = {}
        self._scatter_models: dict = {}

    def _roots(self, objs):
        """The objects of ``objs`` none of whose ancestors is in ``objs``."""
        s = set(objs)
        out = []
        for o in objs:
            p = self.parents[o]
            while p >= 0 and p not in s:
                p = self.parents[p]
            if p < 0:
                out.append(o)
        return out


class SampleRenderer:
    """Renders samples of a dataset on the kernels' device (see the module docstring).

    spec : a :class:`~taichi_xray.datasets.spec.DatasetSpec`; seed : the dataset seed.
    """

    def __init__(self, spec: DatasetSpec, seed: int):
        runtime.ensure_init()
        self.spec = spec
        self.seed = check_seed(seed)
        self.device = runtime.torch_device()
        self.physics_dtype = torch.float32 if runtime.arch() in ("vulkan", "metal") else torch.float64
        self.width, self.height = spec.image_size
        self.param_names = parameter_names(spec)
        self.mask_names = list(spec.output.masks)
        self.path_length_names = list(spec.output.path_lengths)
        self.landmark_names = spec.landmark_names if spec.output.landmarks else []
        self._scenes: dict = {}
        self._models: dict = {}
        self._pool = None  # resident: the detector model's Beer-Lambert buffers (ti.ndarray)
        self._launch = None

    # ------------------------------------------------------------------ setup
    def _state(self, s: int) -> _SceneState:
        st = self._scenes.get(s)
        if st is None:
            st = self._scenes[s] = _SceneState(self.spec, s)
        return st

    def _camera(self, st: _SceneState, p: SampleParams) -> Camera:
        cs = st.scene.camera_spec
        w, h = self.width, self.height
        if cs.kind == "c_arm":
            return Camera.c_arm(sid=p.sid, sdd=p.sdd, width=w, height=h, pixel_spacing=cs.pixel_spacing * cs.width / w,
                                lao=p.lao, cran=p.cran, isocenter=p.isocenter, radiological=cs.radiological)
        return cs.build(size=(w, h))

    def _spectrum(self, st: _SceneState, p: SampleParams):
        ss = st.scene.spectrum_spec
        if ss.kind != "tungsten":
            return st.scene.spectrum
        key = (p.kvp, tuple(sorted(p.filtration.items())))
        spec = st._spectra.get(key)
        if spec is None:
            from ..physics.spectra import Spectrum

            if len(st._spectra) >= 32:
                st._spectra.clear()
            spec = st._spectra[key] = Spectrum.tungsten(p.kvp, filtration=dict(p.filtration),
                                                        bin_width=ss.bin_width)
        return spec

    @staticmethod
    def _resident(pipe: Pipeline) -> bool:
        """Whether ``pipe`` projects resident (see the module docstring)."""
        return runtime.resident() and pipe.resident_ok()

    def _pipelines(self, st: _SceneState, cam: Camera):
        if st.pipe is None:
            st.pipe = Pipeline.from_scene(st.scene, cameras=cam, overlap="raise", deterministic=True,
                                          dtype=torch.float32, physics_dtype=self.physics_dtype,
                                          check_nesting="never")  # checked per sample in _project
            if st.len_groups:
                meshes = []
                for g in st.len_groups:
                    off = np.cumsum([0] + [len(st.rest[r]) for r in g])
                    meshes.append((np.concatenate([st.rest[r] for r in g]),
                                   np.concatenate([st.faces[r] + off[j] for j, r in enumerate(g)])))
                st.len_pipe = Pipeline(meshes, cam, materials=None, names=st.len_names, output="path_length",
                                       deterministic=True, dtype=torch.float32, label=st.scene.label)
        return st.pipe, st.len_pipe

    # ------------------------------------------------------------------ geometry
    def _geometry(self, st: _SceneState, p: SampleParams):
        """Per-object vertices (float64) and landmark positions (L, 3) of one sample."""
        verts = list(st.base)
        for o, model in st.shape_models.items():
            verts[o] = model.vertices(p.shapes[st.scene.names[o]])
        pts = [None if pos is None else pos.copy() for (_, pos, _) in st.landmarks]
        for k, (pose, (objs, roots)) in enumerate(zip(self.spec.poses, st.pose_groups)):
            rot, tr = p.poses[k]
            if not (np.any(rot) or np.any(tr)):
                continue
            R = rotation_matrix(rot)
            c = np.asarray(pose.centre) if pose.centre is not None else \
                _volume_centroid([(verts[r], st.faces[r]) for r in roots])
            shift = c + tr - R @ c  # v' = R (v - c) + c + t = R v + shift
            for o in objs:
                verts[o] = verts[o] @ R.T + shift
            member = set(objs)
            for j, (obj, _, _) in enumerate(st.landmarks):
                if pts[j] is not None and obj in member:
                    pts[j] = R @ pts[j] + shift
        L = len(st.landmarks)
        xyz = np.zeros((L, 3))
        for k, (obj, pos, vtx) in enumerate(st.landmarks):
            xyz[k] = pts[k] if pos is not None else verts[obj][vtx]
        return verts, xyz

    # ------------------------------------------------------------------ physics
    def _photons(self, spectrum, p: SampleParams, cam: Camera) -> np.ndarray:
        """Photons per pixel and energy bin (E,) without the patient."""
        from ..physics.source import photons_per_pixel

        if not math.isnan(p.mAs):
            sdd = p.sdd if not math.isnan(p.sdd) else cam.detector_distance
            if sdd is None or cam.pixel_spacing is None:
                raise ValueError(f"{self.spec.label}: [noise] mAs needs a camera with a pixel spacing")
            return photons_per_pixel(spectrum, p.mAs, sdd, cam.pixel_spacing ** 2)
        if not math.isnan(p.photons_per_pixel):
            return spectrum.photons / spectrum.photons.sum() * p.photons_per_pixel
        return np.asarray(spectrum.photons, dtype=np.float64)

    def _transmission(self, st: _SceneState, pipe: Pipeline, Lp: kb.HostCopy, spectrum, p: SampleParams,
                      cam: Camera, verts):
        """(T (H, W), intensity (H, W), floor) in the physics dtype on the device (torch).
        ``Lp``: the projection's path lengths; resident, Beer-Lambert reads them on the device and
        :meth:`~taichi_xray.kernels.buffers.HostCopy.host` downloads them only for scatter."""
        spec = self.spec
        L = Lp.dev
        dt, dev = self.physics_dtype, Lp.device
        gen = None
        if spec.noise is not None:
            gen = torch.Generator(device=dev)
            gen.manual_seed(p.noise_seed)
        dm = spec.detector_model
        if dm is None:
            # resident: Beer-Lambert on the device (the heel effect's weights included), one download of the
            # sums; a focal spot: one rasterizer instance per source sample, averaged with the pipeline's weights
            I = pipe._sources_combined(pipe.physics(L))[0, 0]
            I0 = pipe.physics_tables(dt, dev)[2]
            T = I / I0
            if spec.scatter is not None:
                T = T + self._scatter(st, pipe, Lp.host(), T, spectrum, p, cam, verts)
                I = T * I0
            if spec.noise is None:
                return T, I, torch.finfo(dt).tiny
            n0 = float(self._photons(spectrum, p, cam).sum())
            T = torch.poisson(T * n0, generator=gen) / n0
            return T, T * I0, 0.5 / n0
        from ..kernels import physics as kp
        from ..physics.detector_model import DetectorModel, signal_weights

        mu = pipe.physics_tables(dt, dev)[0]
        e = spectrum.energies
        N = self._photons(spectrum, p, cam)
        w = np.zeros((2, 1, mu.shape[1]))
        w[:, 0, :len(e)] = signal_weights(N, e, st.scene.detector)
        if Lp.resident:
            S = self._two_row_sums(pipe, L, mu, w)
        else:  # (2, I, H, W): the kernel writes every rasterizer instance (I > 1 with a focal spot)
            S = torch.zeros((2, L.shape[0], L.shape[2], L.shape[3]), dtype=dt, device=dev)
            kp.beer_lambert(L, mu, torch.as_tensor(w, dtype=dt, device=dev).contiguous(), S, pipe.n_channels, 2, 0)
        S = pipe._sources_combined(S)  # a focal spot's source samples averaged: (2, 1, H, W)
        S10 = float(w[0].sum())
        S1, S2 = S[0, 0], S[1, 0]
        if spec.scatter is not None:  # scatter photons at the scatter's mean energy: S2 grows by E_s S1
            from ..physics.scatter import scatter_energy_keV

            sc = self._scatter(st, pipe, Lp.host(), S1 / S10, spectrum, p, cam, verts) * S10
            S1, S2 = S1 + sc, S2 + sc * scatter_energy_keV(p.kvp)
        ps = cam.pixel_spacing if cam.pixel_spacing is not None else 1.0
        model = self._models.get(ps)
        if model is None:  # one per pixel pitch: its MTF caches its transfer function
            kw = dict(gain=dm.gain, offset=dm.offset)
            if dm.swank is not None:
                kw["swank"] = dm.swank
            if dm.preset != "none":
                model = DetectorModel.preset(dm.preset, pixel_pitch_mm=ps, **kw)
                if not dm.blur:
                    model.mtf = None
            else:
                model = DetectorModel(pixel_pitch_mm=ps, **kw)
            if len(self._models) > 8:
                self._models.clear()
            self._models[ps] = model
        model.electronic_noise = 0.0 if math.isnan(p.electronic_noise) else float(p.electronic_noise)
        if spec.noise is not None:
            reading = model(S1, S2, generator=gen, method=dm.method, adc=False)
            n_abs = float((N * st.scene.detector.efficiency(e)).sum())
            floor = 0.5 / n_abs
        else:
            reading = model.expected(S1)
            floor = torch.finfo(dt).tiny
        T = (reading - dm.offset) / dm.gain / S10
        return T, reading, floor

    def _two_row_sums(self, pipe: Pipeline, L, mu: torch.Tensor, w: np.ndarray) -> torch.Tensor:
        """Resident: the detector model's Beer-Lambert sums (2, I, H, W) (rows S1, S2) of the kept
        path lengths L (I, C, H, W) ``ti.ndarray``, with mu (C, E8) (uploaded when it changes) and
        the sample's weights w (2, 1, E8) (uploaded, 2 x E8 numbers), summed on the device by the
        kernel the torch path calls; one download of the sums (torch, host)."""
        from ..kernels import physics as kp
        from ..kernels.launch import LaunchCache

        if self._pool is None:
            self._pool, self._launch = kb.BufferPool(True), LaunchCache()
        dt = self.physics_dtype
        pool = self._pool
        mu_d = pool.resident_copy(("mu", dt), mu)
        w_d = pool.upload("dm_w", np.ascontiguousarray(w), dt)
        S = pool.get("dm_S", (2, L.shape[0], L.shape[2], L.shape[3]), dt, zero=True)
        self._launch("dm_bl", kp.beer_lambert, L, mu_d, w_d, S, pipe.n_channels, 2, 0)
        return kb.to_torch(S, self.device)

    def _scatter(self, st: _SceneState, pipe: Pipeline, L: torch.Tensor, primary: torch.Tensor, spectrum,
                 p: SampleParams, cam: Camera, verts) -> torch.Tensor:
        """Scatter (H, W), in units of the primary transmission, by the kernel model of
        :mod:`taichi_xray.physics.scatter`: the water-equivalent thickness of the per-material
        path lengths L (I, C, H, W; torch, its first instance) at the detected spectrum's mean
        energy (air left out), the sample's kVp and source-detector distance, the air gap
        (drawn, or "auto": detector distance minus the farthest depth of the top-level objects),
        rounded to the [scatter] steps for the kernels. Settings outside the calibrated ranges
        are clamped without a warning per sample."""
        import warnings

        from ..physics.materials import get_material
        from ..physics.scatter import KernelScatterModel, ScatterCalibrationWarning, water_equivalent_thickness

        ss = self.spec.scatter
        D = cam.detector_distance
        if ss.air_gap_mm == "auto":
            top = [o for o, par in enumerate(st.parents) if par < 0]
            Pm = np.asarray(cam.P)
            far = max(float((verts[o] @ Pm[2, :3] + Pm[2, 3]).max()) for o in top)
            p.air_gap_mm = float(min(max(D - far, 0.0), 300.0))
        e = spectrum.energies
        wts = spectrum.photons * st.scene.detector.response(e)
        e_eff = float((wts * e).sum() / wts.sum())
        mus = np.array([0.0 if c == pipe.air_channel else float(m.mu([e_eff])[0])
                        for c, m in enumerate(pipe.channel_materials)])
        wet = water_equivalent_thickness(L[0].to(primary.dtype), torch.as_tensor(mus, dtype=primary.dtype),
                                         float(get_material("water").mu([e_eff])[0]))

        def q(x, step):
            return float(round(x / step) * step) if step > 0 else float(x)

        key = (q(p.kvp, ss.kvp_step), q(p.air_gap_mm, ss.air_gap_step_mm))
        model = st._scatter_models.get(key)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ScatterCalibrationWarning)
            if model is None:  # building the kernels costs seconds: one model per rounded (kVp, air gap)
                if len(st._scatter_models) >= 64:
                    st._scatter_models.clear()
                model = st._scatter_models[key] = KernelScatterModel(
                    kvp=key[0], air_gap_mm=key[1], grid=ss.grid, coarse_mm=ss.coarse_mm, sdd_mm=D)
            model.sdd_mm = float(D)  # only the divergent-beam magnification depends on it
            return model(primary, torch.clamp(wet, min=0.0), cam.pixel_spacing,
                         principal_point=cam.principal_point)

    # ------------------------------------------------------------------ one sample
    def render(self, index: int) -> SampleResult:
        """Sample ``index``: drawn, re-drawn on :data:`RETRY_ERRORS` (``SeedSequence([seed, index,
        attempt])``, attempt = 1 .. max_attempts - 1), rendered. A sample whose every attempt
        failed comes back with ``failed=True`` and the last error."""
        err = ""
        p = None
        for attempt in range(self.spec.max_attempts):
            p = draw(self.spec, self.seed, index, attempt)
            try:
                return self._render(p)
            except RETRY_ERRORS as exc:
                err = f"{type(exc).__name__}: {exc}"
        return self._failed(p, err)

    def _render(self, p: SampleParams) -> SampleResult:
        spec, out = self.spec, self.spec.output
        st = self._state(p.scene)
        cam = self._camera(st, p)
        spectrum = self._spectrum(st, p)
        pipe, len_pipe = self._pipelines(st, cam)
        pipe.set_cameras(cam)
        if spectrum is not pipe.spectrum:
            pipe.set_spectrum(spectrum)
        verts, xyz = self._geometry(st, p)
        V = pipe.pack_vertices(verts)
        rs = self._project(pipe, V, p)  # raises NestingError / GeometryError
        cam = pipe.cameras[0]
        Lp = kb.HostCopy(rs.L, self.device if kb.is_nd(rs.L) else rs.L.device)
        T, I, floor = self._transmission(st, pipe, Lp, spectrum, p, cam, verts)
        if out.kind == "line_integral":
            img = -torch.log(torch.clamp(T, min=floor))
        elif out.kind == "transmission":
            img = T
        else:
            img = I
        img = img.to(torch.float32)
        if not bool(torch.isfinite(img).all()):
            raise FloatingPointError(f"{spec.label}: sample {p.index}: the image has NaN or infinite values")
        u16, window = None, np.array([np.nan, np.nan])
        if out.uint16:
            u16, window = self._uint16(img)
        masks = pls = None
        if len_pipe is not None:
            len_pipe.set_cameras(cam)
            Vl = len_pipe.pack_vertices([np.concatenate([verts[r] for r in g]) for g in st.len_groups])
            # (G + G', H, W) union path lengths of the groups; resident: projected on the device and
            # downloaded once (they go to disk)
            Lg = len_pipe.project(Vl, resident=self._resident(len_pipe)).L
            Lg = (kb.to_torch(Lg, self.device) if kb.is_nd(Lg) else Lg)[0]
            if st.n_masks:
                masks = Lg[:st.n_masks] > 0
            if len(st.len_groups) > st.n_masks:
                pls = Lg[st.n_masks:].to(torch.float32, copy=True)
        lm = self._landmarks(cam, xyz)
        return SampleResult(p.index, p.scene, p.attempt + 1, False, "", p.vector(spec), img, u16, window, masks, pls,
                            *lm, np.asarray(cam.P, dtype=np.float64))

    def _project(self, pipe: Pipeline, V: torch.Tensor, p: SampleParams):
        """Project and check the nesting on every sample. Conflicts of a pair of objects on at
        most ``nesting_tolerance_px`` pixels are ignored (the check reports isolated single
        pixels where a ray grazes a fold of a mesh: an exit and an entry of the same object at
        equal float32 depths, sorted exit first); the worst ignored count goes to the
        ``nesting_conflict_px`` parameter. More raises the pipeline's NestingError. Resident
        (:meth:`_resident`): L and the slots stay ``ti.ndarray`` on the device and the check reads them there."""
        res = self._resident(pipe)
        rs = pipe.project(V, keep_slots=True, resident=res)
        conf = pipe.rasterizer(V.dtype, resident=res).nesting_conflicts(rs, pipe.parents, pipe.nesting_tol_mm,
                                                                         pipe.face_interior)  # (tetrahedra)
        worst = int(conf.max()) if conf.size else 0
        if worst > self.spec.nesting_tolerance_px:
            pipe.check_nesting(rs)  # raises with the objects and pixel counts
        p.nesting_px = float(worst)
        return rs

    def _uint16(self, img: torch.Tensor):
        a = img.to(torch.float64)
        out = self.spec.output
        if out.window is None:
            q = torch.quantile(a.reshape(-1), torch.tensor([0.005, 0.995], dtype=torch.float64, device=a.device))
            lo, hi = float(q[0]), float(q[1])
        else:
            lo, hi = out.window
        top = 65535.0
        scale = top / (hi - lo) if hi > lo else 0.0
        x = torch.clamp((a - lo) * scale, 0.0, top)
        if out.invert:
            x = top - x
        return torch.round(x).to(torch.int32), np.array([lo, hi], dtype=np.float64)

    def _landmarks(self, cam: Camera, xyz: np.ndarray):
        L = len(self.landmark_names)
        if L == 0:
            return (np.zeros((0, 2), np.float32), np.zeros(0, np.float32), np.zeros(0, bool),
                    np.zeros((0, 3), np.float32))
        uv, w = cam.project(xyz)
        with np.errstate(invalid="ignore"):
            vis = ((w > 0) & (uv[:, 0] >= -0.5) & (uv[:, 0] <= self.width - 0.5) & (uv[:, 1] >= -0.5)
                   & (uv[:, 1] <= self.height - 0.5))
        uv = np.where(np.isfinite(uv), uv, np.nan)
        return uv.astype(np.float32), w.astype(np.float32), vis, xyz.astype(np.float32)

    def _failed(self, p: SampleParams, err: str) -> SampleResult:
        H, W = self.height, self.width
        dev = self.device
        G, G2, L = len(self.mask_names), len(self.path_length_names), len(self.landmark_names)
        nan = float("nan")
        out = self.spec.output
        return SampleResult(
            p.index, p.scene, p.attempt + 1, True, err, p.vector(self.spec),
            torch.full((H, W), nan, dtype=torch.float32, device=dev),
            torch.zeros((H, W), dtype=torch.int32, device=dev) if out.uint16 else None, np.array([nan, nan]),
            torch.zeros((G, H, W), dtype=torch.bool, device=dev) if G else None,
            torch.full((G2, H, W), nan, dtype=torch.float32, device=dev) if G2 else None,
            np.full((L, 2), nan, np.float32), np.full(L, nan, np.float32), np.zeros(L, bool),
            np.full((L, 3), nan, np.float32), np.full((3, 4), nan))
