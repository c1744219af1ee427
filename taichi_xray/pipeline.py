"""The one rendering pipeline: objects -> per-material path lengths -> physics -> image.

:class:`Pipeline` is what the ``render`` command, the viewer, the torch module
(:class:`~taichi_xray.torch.XRayRenderer`) and registration all use; no stage
is written twice.

Stages
------
1. **Projection** (:class:`~taichi_xray.rasterize.Rasterizer`): every face
   adds its signed depth, times a weight, to one or two *channels*. In
   ``channels="materials"`` mode a face of object ``q`` (material ``m_q``) whose
   parent is ``p`` carries ``(m_q, +s_q)`` and ``(m_p, -s_p)`` (``s`` = each
   object's attenuation scale, 1 by default; a top-level object's outside is
   the air channel when ``air=True``, else nothing), so channel ``m`` holds
   the exclusive path length of material ``m``: the cost of a scene follows
   its faces and its number of materials, not its number of objects. Faces
   whose two sides are the same material and scale carry nothing and are
   skipped. In ``channels="objects"`` mode channel ``p`` is object ``p``'s own
   path length (the torch bridge's ``path_lengths``).
2. **Air**: with ``air=True`` the air channel gets the source-to-pixel ray
   length (minus the top-level objects, through their faces' weights).
3. **Physics** (:mod:`taichi_xray.kernels.physics`): polychromatic
   Beer-Lambert ``I = sum_E w(E) exp(-sum_m mu_m(E) L_m)`` with
   ``w = photons x detector response``; ``I0 = sum_E w(E)``.
4. **Output**: intensity, transmission ``I / I0`` or line integral
   ``-ln(I / I0)``.

Nesting is checked from the K-slot depth intervals the first time a geometry
is rendered (:meth:`Pipeline.check_nesting`): an object outside its declared
parent, or overlapping another object without being nested in it, raises
:class:`NestingError` naming both objects and the pixel count (``overlap=
"warn"`` reports it, ``overlap="allow"`` lets overlapping objects add up).

Gradients
---------
The differentiable path (:meth:`Pipeline.render_torch`, used by the torch
module) runs the same kernels: Beer-Lambert's backward is Taichi's autodiff
of the forward kernel, and the path-length backward is the hand-written
z-buffer gradient (the paper's dC/dz = dC/dL * sign through the exact
ray-plane depth) over the saved slots. :meth:`Pipeline.taichi_forward` runs
the forward inside a ``ti.ad.Tape`` with the rasterizer registered through
``ti.ad.grad_replaced`` / ``ti.ad.grad_for``, so a forward written entirely
in Taichi (pose, rasterization, Beer-Lambert, a loss) is differentiated by
Taichi alone.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import taichi as ti
import torch

from . import runtime
from .camera import Camera
from .kernels import buffers as kb
from .kernels import physics as kp
from .kernels.launch import LaunchCache
from .mesh import Mesh, MeshWarning
from .physics.detector import Detector
from .physics.materials import Material, get_material
from .physics.spectra import Spectrum
from .rasterize import Rasterizer, RasterState, prepare_mesh

__all__ = ["Pipeline", "VolumeObject", "NestingError", "NestingWarning", "NESTING_TOL_MM", "OUTPUTS", "material_key"]

NESTING_TOL_MM = 0.05  # surfaces closer than this along a ray count as touching
OUTPUTS = ("line_integral", "transmission", "intensity", "path_length")


class NestingError(ValueError):
    """Objects break their declared nesting (outside their parent, or overlapping)."""


class NestingWarning(UserWarning):
    """Same as :class:`NestingError`, reported as a warning (``overlap="warn"``)."""


@dataclass
class VolumeObject:
    """A CT volume in a pipeline: the :class:`~taichi_xray.objects.volume.Volume` (its own transform
    already applied), the HU conversion to basis materials, the projector ``method`` ("siddon" or
    "trilinear", ``step_mm``), and a name for messages."""

    volume: object
    name: str | None = None
    hu_conversion: object = None
    method: str = "siddon"
    step_mm: float | None = None

    def __post_init__(self):
        from .objects.volume import Volume
        from .physics.hu import get_hu_conversion

        if not isinstance(self.volume, Volume):
            raise TypeError(f"a volume must be a taichi_xray Volume, got {type(self.volume).__name__}")
        self.conversion = get_hu_conversion(self.hu_conversion)
        if self.name is None:
            self.name = self.volume.name


def material_key(m: Material):
    """Materials with the same key share a channel (name, density and composition)."""
    return (m.name, round(m.density, 9), tuple(sorted((k, round(v, 12)) for k, v in m.composition.items())))


def _sync():
    ti.sync()
    if runtime.arch() == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize()


class Pipeline:
    """Render P nested objects seen by V cameras.

    Parameters
    ----------
    meshes : P items, each a :class:`Mesh`, a ``(vertices, faces)`` pair, or a faces
        array (M_p, 3) alone (then vertices are given to every render call).
    cameras : a Camera or a sequence of cameras of one detector size.
    materials : P material specs (see :func:`taichi_xray.physics.get_material`), or None
        for a path-length-only pipeline (``channels="objects"``).
    parents : P parent indices (-1 = top level). names : P names (messages).
    spectrum : :class:`Spectrum` (default monochromatic 60 keV). detector : :class:`Detector`
        or None (ideal photon counter).
    air : attenuate by the air between source and detector (needs cameras with pixel_spacing).
    output : "line_integral" | "transmission" | "intensity" | "path_length".
    dtype : torch.float32 or torch.float64, the precision of the projection (and of the
        physics unless ``physics_dtype`` is given).
    physics_dtype : precision of Beer-Lambert and the output (default: ``dtype``).
    imaging : :class:`~taichi_xray.physics.imaging.Imaging`: focal spot, heel effect, absolute
        photons (mAs), falloff, scatter, detector blur/noise/readout (default: none of them).
    volumes : :class:`VolumeObject` items (CT volumes; a ``Volume`` alone takes the defaults).
        A mesh whose ``parents`` entry is ``P + k`` (P = number of meshes) lies inside volume k
        and replaces the volume's material along its path through it.
    K : slot capacity (None = grow as needed, never shrinks).
    deterministic : bitwise reproducible images and gradients (slower).
    overlap : "raise" | "warn" | "allow" for objects that break their nesting.
    check_nesting : "once" (first render of a geometry) | "always" | "never".
    """

    def __init__(self, meshes, cameras, *, materials=None, parents=None, names=None, spectrum=None,
                 detector=None, air: bool = False, output: str = "line_integral", dtype=torch.float32,
                 K: int | None = None, deterministic: bool = False, overlap: str = "raise",
                 nesting_tol_mm: float = NESTING_TOL_MM, check_nesting: str = "once", label: str | None = None,
                 physics_dtype=None, imaging=None, volumes=None):
        runtime.ensure_init()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if overlap not in ("raise", "warn", "allow"):
            raise ValueError(f"overlap must be 'raise', 'warn' or 'allow', got {overlap!r}")
        if check_nesting not in ("once", "always", "never"):
            raise ValueError(f"check_nesting must be 'once', 'always' or 'never', got {check_nesting!r}")
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        meshes = list(meshes)
        P = len(meshes)
        self.volumes = [v if isinstance(v, VolumeObject) else VolumeObject(v) for v in (volumes or [])]
        if P == 0 and not self.volumes:
            raise ValueError("no meshes given")
        self.names = list(names) if names is not None else [
            (m.name if isinstance(m, Mesh) and m.name else f"object {p}") for p, m in enumerate(meshes)]
        if len(self.names) != P:
            raise ValueError(f"{len(self.names)} names for {P} meshes")
        parents = [-1] * P if parents is None else [int(q) for q in parents]
        # meshes inside a volume: their volume replaces a parent (the volume is left out along their path)
        self.in_volume = {p: q - P for p, q in enumerate(parents) if q >= P}
        for p, k in self.in_volume.items():
            if k >= len(self.volumes):
                raise ValueError(f"parents[{p}] = {parents[p]}: there are {P} meshes and {len(self.volumes)} volumes")
        self.parents = [(-1 if q >= P else q) for q in parents]
        _check_parents(self.parents, P)
        self.label = label or "<pipeline>"
        self.output = output
        self.dtype = dtype
        self.physics_dtype = physics_dtype
        if physics_dtype not in (None, torch.float32, torch.float64):
            raise TypeError(f"physics_dtype must be torch.float32 or torch.float64, got {physics_dtype}")
        self.K = K
        self.deterministic = bool(deterministic)
        self.overlap = overlap
        self.nesting_tol_mm = float(nesting_tol_mm)
        self.check_nesting_mode = check_nesting
        self.air = bool(air)
        self.mode = "objects" if (materials is None or output == "path_length") else "materials"
        if self.mode == "materials" and len(materials) != P:
            raise ValueError(f"{len(materials)} materials for {P} meshes")
        self._geometry(meshes)
        self.materials = [(None if p in self.tets else get_material(m)) for p, m in enumerate(materials)] \
            if materials is not None else None
        self._channels()
        self.visible = np.ones(P, bool)
        self.mu_scale = np.ones(P)
        self.spectrum = spectrum if spectrum is not None else Spectrum.monochromatic(60.0)
        self.detector = detector
        from .physics.imaging import Imaging

        self.imaging = imaging if imaging is not None else Imaging()
        if not isinstance(self.imaging, Imaging):
            raise TypeError(f"imaging must be an Imaging, got {type(self.imaging).__name__}")
        self._rz: dict = {}
        self._vproj: dict = {}
        self._phys: dict = {}
        self._launch = LaunchCache()
        self._checked = False
        self.nesting_messages: list[str] = []
        self.timings: dict = {}
        self.set_cameras(cameras)

    # ------------------------------------------------------------------ setup
    def _geometry(self, meshes):
        """Concatenate the objects: global faces, face -> object, vertex offsets, default vertices."""
        from .objects.tetmesh import TetMesh

        Fs, Vs, voff, self.open_objects, self._pending = [], [], [0], [], []
        self.tets: dict = {}  # object index -> (TetMesh, indices of its faces kept)
        interior = []
        for p, m in enumerate(meshes):
            if isinstance(m, TetMesh):  # all faces whose density jump is not zero (or on the boundary)
                active = m.linear_jumps()[2] if m.kind == "linear" else m.face_jumps()[1]
                keep = np.flatnonzero(active | m.boundary_mask)
                V, F = np.asarray(m.vertices, np.float64), np.ascontiguousarray(m.faces[keep], np.int32)
                self.tets[p] = (m, keep)
                Vs.append(V)
                interior.append(~m.boundary_mask[keep])
                Fs.append(F)
                voff.append(voff[-1] + len(V))
                continue
            if isinstance(m, Mesh) or (isinstance(m, tuple) and len(m) == 2):
                V, F, closed = prepare_mesh(m, self.names[p], stacklevel=4)
                Vs.append(V)
                if not closed:
                    self.open_objects.append(p)
            else:  # faces only: checked against the first vertices rendered
                F = np.asarray(m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else
                               (m.faces if hasattr(m, "faces") else m))
                if F.ndim != 2 or F.shape[1] != 3 or not np.issubdtype(F.dtype, np.integer) or len(F) == 0:
                    raise ValueError(f"{self.names[p]}: faces must be a non-empty integer array (M, 3), got "
                                     f"{F.dtype} {F.shape}")
                n = int(F.max()) + 1
                if F.min() < 0:
                    raise ValueError(f"{self.names[p]}: negative face indices")
                F = np.ascontiguousarray(F, np.int32)
                Vs.append(None)
                self._pending.append(p)
                V = np.zeros((n, 3))
            Fs.append(F)
            interior.append(np.zeros(len(F), bool))
            voff.append(voff[-1] + len(V))
        self.face_interior = np.concatenate(interior) if interior else np.zeros(0, bool)
        self.vertex_offsets = np.asarray(voff, np.int64)
        self._faces_local = Fs
        self.faces = np.concatenate([F + voff[p] for p, F in enumerate(Fs)]).astype(np.int32) if Fs else \
            np.zeros((0, 3), np.int32)
        self.face_obj = np.concatenate([np.full(len(F), p, np.int32) for p, F in enumerate(Fs)]) if Fs else \
            np.zeros(0, np.int32)
        self.n_vertices = int(voff[-1])
        self.default_vertices = None if self._pending else (np.concatenate(Vs) if Vs else np.zeros((0, 3)))

    def _check_pending(self, V: torch.Tensor):
        """Faces given alone: check their orientation (signed volume) and closure once, with
        the first vertices rendered; inward closed meshes are reversed with a warning."""
        if not self._pending:
            return
        Vn = V[0].detach().cpu().numpy().astype(np.float64)
        changed = False
        for p in self._pending:
            a, b = self.vertex_offsets[p], self.vertex_offsets[p + 1]
            F0 = self._faces_local[p]
            _, F, closed = prepare_mesh((Vn[a:b], F0), self.names[p], stacklevel=6)
            if not closed:
                self.open_objects.append(p)
            if not np.array_equal(F, F0):
                self._faces_local[p] = F
                changed = True
        self._pending = []
        if changed:
            self.faces = np.concatenate([F + self.vertex_offsets[p] for p, F in enumerate(self._faces_local)]
                                        ).astype(np.int32)
        self._rz.clear()

    def _channels(self):
        P = len(self.names)
        if self.mode == "objects":
            if self.tets or self.volumes:
                raise ValueError("path-length pipelines (output='path_length') take surface meshes only; "
                                 "tetrahedral meshes and volumes render in a pipeline with materials")
            self.channel_names = list(self.names)
            self.channel_materials = None
            self.obj_channel = np.arange(P)
            self.air_channel = None
            return
        keys, mats, obj_ch = {}, [], []

        def channel(m):
            k = material_key(m)
            if k not in keys:
                keys[k] = len(mats)
                mats.append(m)
            return keys[k]

        self.tet_channels = {}
        for p, m in enumerate(self.materials):
            if p in self.tets:  # a tetrahedral mesh: one channel per basis material
                self.tet_channels[p] = [channel(get_material(b)) for b in self.tets[p][0].basis]
                obj_ch.append(-1)
                if any(q == p for q in self.parents):
                    raise ValueError(f"'{self.names[p]}' is a tetrahedral mesh with a varying density: objects cannot "
                                     "be nested inside it (put them beside it, or in its parent)")
            else:
                obj_ch.append(channel(m))
        self.volume_channels = [[channel(m) for m in v.conversion.materials] for v in self.volumes]
        self.air_channel = None
        if self.air:
            self.air_channel = channel(get_material("air"))
        self.channel_materials = mats
        self.channel_names = [m.name for m in mats]
        self.obj_channel = np.asarray(obj_ch)

    @classmethod
    def from_scene(cls, scene, cameras=None, spectrum=None, **kw) -> "Pipeline":
        """The pipeline of a :class:`~taichi_xray.scene.Scene` (its meshes, materials, parents,
        camera, spectrum, detector and ``[output]``); ``cameras``/``spectrum`` replace the scene's."""
        out = scene.output
        kw.setdefault("air", out.air)
        kw.setdefault("output", out.kind)
        kw.setdefault("label", scene.label)
        if scene.imaging is not None:
            kw.setdefault("imaging", scene.imaging)
        return cls(scene.meshes, cameras if cameras is not None else scene.camera,
                   materials=[o.material for o in scene.objects], parents=scene.parents, names=scene.names,
                   spectrum=scene.spectrum if spectrum is None else spectrum, detector=scene.detector,
                   volumes=scene.volumes, **kw)

    # ------------------------------------------------------------------ configuration
    @property
    def n_objects(self) -> int:
        return len(self.names)

    @property
    def n_channels(self) -> int:
        return len(self.channel_names)

    def set_cameras(self, cameras, instances=None) -> None:
        """Cameras (one detector size) and optionally (vertex set, camera) instances."""
        cams = [cameras] if isinstance(cameras, Camera) else list(cameras)
        prev = getattr(self, "_given_cameras", None)
        if prev is not None and len(prev) == len(cams) and all(a is b for a, b in zip(prev, cams)) and \
                ((instances is None and self.instances is None) or
                 (instances is not None and self.instances is not None and np.array_equal(instances, self.instances))):
            return  # the same cameras: keep the rasterizers' tables, air ray lengths and physics tables
        self._given_cameras = list(cams)
        if not cams or not all(isinstance(c, Camera) for c in cams):
            raise TypeError("cameras must be a Camera or a non-empty sequence of Camera objects")
        if len({(c.height, c.width) for c in cams}) != 1:
            raise ValueError("all cameras must have the same detector size")
        if self.air and any(c.pixel_spacing is None for c in cams):
            raise ValueError("air=True needs cameras with pixel_spacing (the detector's distance)")
        if self.default_vertices is not None and len(self.default_vertices):
            cams = [_front_facing(c, self.default_vertices) for c in cams]
        self.cameras = cams
        self._ray = {}
        self._phys.clear()
        # the cameras rays are cast from: one per view, or one per focal-spot sample
        self._ray_cameras, self._ray_view, self._ray_weight = [], [], []
        for v, c in enumerate(cams):
            for rc, wt in self.imaging.sources(c):
                self._ray_cameras.append(rc)
                self._ray_view.append(v)
                self._ray_weight.append(wt)
        self.instances = None
        self._expand(None if instances is None else np.asarray(instances, np.int32))

    def _expand(self, instances) -> None:
        """Rasterizer instances: each (vertex set, view) for every source position of the view."""
        user = np.asarray([(0, v) for v in range(len(self.cameras))] if instances is None else instances,
                          np.int32).reshape(-1, 2)
        self.instances = None if instances is None else user
        self._user_instances = user
        rv = np.asarray(self._ray_view)
        inst, owner, weight = [], [], []
        for u, (s, v) in enumerate(user):
            for rc in np.flatnonzero(rv == v):
                inst.append((s, rc))
                owner.append(u)
                weight.append(self._ray_weight[rc])
        self._raster_instances = np.asarray(inst, np.int32)
        self._inst_owner = np.asarray(owner, np.int64)
        self._inst_weight = np.asarray(weight, np.float64)
        self._combine = {}
        self._vproj = {}
        for rz in self._rz.values():
            rz.set_cameras(self._ray_cameras, self._raster_instances)

    def set_instances(self, instances) -> None:
        if instances is None and self.instances is None:
            return
        if instances is not None and self.instances is not None and np.array_equal(instances, self.instances):
            return
        self._expand(None if instances is None else np.asarray(instances, np.int32))

    @property
    def image_shape(self) -> tuple[int, int]:
        return self.cameras[0].height, self.cameras[0].width

    def set_spectrum(self, spectrum: Spectrum) -> None:
        self.spectrum = spectrum
        self._phys.clear()

    def set_detector(self, detector: Detector | None) -> None:
        self.detector = detector
        self._phys.clear()

    def set_imaging(self, imaging) -> None:
        """Replace the :class:`~taichi_xray.physics.imaging.Imaging` (sources, detector model...)."""
        from .physics.imaging import Imaging

        if not isinstance(imaging, Imaging):
            raise TypeError(f"imaging must be an Imaging, got {type(imaging).__name__}")
        self.imaging = imaging
        cams, self._given_cameras = self._given_cameras, None
        self.set_cameras(cams, self.instances)

    def set_object_weights(self, visible=None, mu_scale=None) -> None:
        """Per object: visibility (a hidden object's volume takes its nearest visible
        ancestor's material, or air/nothing) and a factor on its attenuation."""
        P = self.n_objects
        if visible is not None:
            v = np.asarray(visible, bool)
            if v.shape != (P,):
                raise ValueError(f"visible needs {P} entries, got {v.shape}")
            self.visible = v
        if mu_scale is not None:
            s = np.asarray(mu_scale.detach().cpu() if isinstance(mu_scale, torch.Tensor) else mu_scale, np.float64)
            if s.shape != (P,) or not np.isfinite(s).all():
                raise ValueError(f"mu_scale needs {P} finite entries, got {s.shape}")
            self.mu_scale = s
        for rz in self._rz.values():
            rz.set_weights(*self._face_tables(rz.dtype))
            self._set_linear(rz)

    def object_weights(self):
        """(ch (P, 2) int, w (P, 2) float): each object's faces add w[p, 0] x signed depth to
        channel ch[p, 0] (its own material) and w[p, 1] x signed depth to ch[p, 1] (what
        surrounds it); -1 = nothing."""
        P = self.n_objects
        ch = np.full((P, 2), -1, np.int64)
        w = np.zeros((P, 2))
        if self.mode == "objects":
            ch[:, 0] = np.arange(P)
            w[:, 0] = 1.0
            return ch, w
        for q in range(P):
            if not self.visible[q] or q in self.tets:  # tetrahedral meshes: per-face tables (_face_tables)
                continue
            p = self.parents[q]
            while p >= 0 and not self.visible[p]:
                p = self.parents[p]
            inner = (int(self.obj_channel[q]), float(self.mu_scale[q]))
            outer = (int(self.obj_channel[p]), float(self.mu_scale[p])) if p >= 0 else \
                ((self.air_channel, 1.0) if (self.air_channel is not None and q not in self.in_volume) else (-1, 0.0))
            if inner[0] == outer[0]:
                d = inner[1] - outer[1]
                if d != 0:
                    ch[q, 0], w[q, 0] = inner[0], d
            else:
                ch[q, 0], w[q, 0] = inner
                if outer[0] >= 0:
                    ch[q, 1], w[q, 1] = outer[0], -outer[1]
        return ch, w

    def _structure(self):
        """Per object and column: (channel, [(object or P for the constant 1, coefficient)]), so that
        a face weight = sum coef * s[object] with s = the objects' attenuation scales. The same
        rules as :meth:`object_weights` without dropping weights that are zero at the current
        scales (their gradients are not zero)."""
        P = self.n_objects
        out = [[(-1, []), (-1, [])] for _ in range(P)]
        for q in range(P):
            if not self.visible[q] or q in self.tets:
                continue
            p = self.parents[q]
            while p >= 0 and not self.visible[p]:
                p = self.parents[p]
            ci = int(self.obj_channel[q])
            co, so = (int(self.obj_channel[p]), p) if p >= 0 else \
                ((self.air_channel, P) if (self.air_channel is not None and q not in self.in_volume) else (-1, P))
            if ci == co:
                out[q][0] = (ci, [(q, 1.0), (so, -1.0)])
            else:
                out[q][0] = (ci, [(q, 1.0)])
                if co >= 0:
                    out[q][1] = (co, [(so, -1.0)])
        return out

    def torch_face_tables(self, mu_scale=None, densities=None, vertices=None, dtype=torch.float64):
        """Face tables as differentiable torch functions of ``mu_scale`` (P,) and of the densities of
        tetrahedral meshes ({object: (T, B) per tetrahedron or (N, B) per vertex}), and of the
        vertices (N, 3) for per-vertex densities: (face_ch (M, J) int numpy, face_w (M, J) torch,
        (lin_idx, face_lin (1, ML, J, 4), obj_xref (1, P, 3)) or None)."""
        from .objects.tetmesh import constant_jumps, linear_jumps

        P = self.n_objects
        dev = runtime.torch_device()
        s = torch.ones(P + 1, dtype=dtype, device=dev) if mu_scale is None else \
            torch.cat([torch.as_tensor(mu_scale, device=dev).to(dtype), torch.ones(1, dtype=dtype, device=dev)])
        struct = self._structure()
        J = max([2] + [len(t.basis) + 1 for t, _ in self.tets.values()])
        ch_obj = np.full((P, J), -1, np.int64)
        cols = []
        for j in range(2):
            terms = []
            for q in range(P):
                c, lst = struct[q][j]
                ch_obj[q, j] = c
                terms.append(sum((coef * s[o] for o, coef in lst), torch.zeros((), dtype=dtype, device=dev)))
            cols.append(torch.stack(terms))
        w_obj = torch.stack(cols + [torch.zeros(P, dtype=dtype, device=dev)] * (J - 2), 1)  # (P, J)
        fo = torch.as_tensor(self.face_obj, device=dev).long()
        W = w_obj[fo]
        ch = ch_obj[self.face_obj]
        densities = dict(densities or {})
        lin_tabs = None
        for p, (tm, keep) in self.tets.items():
            sel = np.flatnonzero(self.face_obj == p)
            q = self.parents[p]
            while q >= 0 and not self.visible[q]:
                q = self.parents[q]
            co, so = (int(self.obj_channel[q]), q) if q >= 0 else \
                ((self.air_channel, P) if self.air_channel is not None else (-1, P))
            B = len(tm.basis)
            rows = torch.zeros((len(sel), J), dtype=dtype, device=dev)
            ch[sel] = -1
            if self.visible[p]:
                ch[sel, :B] = np.asarray(self.tet_channels[p])[None]
                if co >= 0:
                    ch[sel, B] = np.where(tm.boundary_mask[keep], co, -1)
                    rows[:, B] = torch.as_tensor(np.where(tm.boundary_mask[keep], -1.0, 0.0), dtype=dtype,
                                                 device=dev) * s[so]
                if tm.kind == "constant":
                    d = densities.get(p, densities.get(self.names[p]))
                    d = (self._tet_tensor(p, "densities", dev) if d is None else torch.as_tensor(d, device=dev)).to(dtype)
                    jm = constant_jumps(d, self._tet_tensor(p, "face_tets", dev))[torch.as_tensor(keep)]
                    rows[:, :B] = jm * s[p]
            W = W.index_copy(0, torch.as_tensor(sel, device=dev), rows)
        if self.linear_tets:
            lin_idx = np.full(len(self.faces), -1, np.int64)
            tabs, X, n = [], torch.zeros((1, P, 3), dtype=dtype, device=dev), 0
            for p in self.linear_tets:
                tm, keep = self.tets[p]
                sel = np.flatnonzero(self.face_obj == p)
                lin_idx[sel] = n + np.arange(len(sel))
                n += len(sel)
                a, b = self.vertex_offsets[p], self.vertex_offsets[p + 1]
                Vp = (self._tet_tensor(p, "vertices", dev) if vertices is None else vertices[a:b]).to(device=dev, dtype=dtype)
                xr = Vp.detach().mean(0)
                d = densities.get(p, densities.get(self.names[p]))
                d = (self._tet_tensor(p, "densities", dev) if d is None else torch.as_tensor(d, device=dev)).to(dtype)
                jl = linear_jumps(Vp, self._tet_tensor(p, "tets", dev), d, self._tet_tensor(p, "face_tets", dev),
                                  xr)[torch.as_tensor(keep)]
                B = len(tm.basis)
                tab = torch.zeros((len(sel), J, 4), dtype=dtype, device=dev)
                tab = torch.cat([jl * s[p], tab[:, B:]], 1) if J > B else jl * s[p]
                tab = tab.clone()
                tab[:, :, 0] = tab[:, :, 0] + torch.cat([torch.zeros((len(sel), B), dtype=dtype, device=dev),
                                                         W[torch.as_tensor(sel, device=dev), B:]], 1) if J > B else 0
                tabs.append(tab)
                X = X.index_copy(1, torch.as_tensor([p], device=dev), xr[None, None])
            lin_tabs = (lin_idx, torch.cat(tabs)[None], X)
        return ch, W, lin_tabs

    def _tet_tensor(self, p: int, name: str, dev) -> torch.Tensor:
        """A tetrahedral object's static array (``tets``, ``face_tets``, ``densities``, ``vertices``) as a
        torch tensor on ``dev``, made once: the face tables are rebuilt per call when vertices or
        densities move, these inputs are not."""
        cache = self.__dict__.setdefault("_tet_tensors", {})
        key = (p, name, str(dev))
        t = cache.get(key)
        if t is None:
            t = cache[key] = torch.tensor(np.asarray(getattr(self.tets[p][0], name)), device=dev)
        return t

    def _face_tables(self, dtype):
        ch, w = self.object_weights()
        if self.mode == "objects":
            return ch[self.face_obj][:, :1], w[self.face_obj][:, :1]
        fch, fw = ch[self.face_obj], w[self.face_obj]
        if not self.tets:
            return fch, fw
        J = max([2] + [len(t.basis) + 1 for t, _ in self.tets.values()])
        out_ch = np.full((len(fch), J), -1, np.int64)
        out_w = np.zeros((len(fch), J))
        out_ch[:, :2], out_w[:, :2] = fch, fw
        for p, (tm, keep) in self.tets.items():
            sel = np.flatnonzero(self.face_obj == p)
            out_ch[sel], out_w[sel] = -1, 0.0
            if not self.visible[p]:
                continue
            q = self.parents[p]
            while q >= 0 and not self.visible[q]:
                q = self.parents[q]
            outer = (int(self.obj_channel[q]), float(self.mu_scale[q])) if q >= 0 else \
                ((self.air_channel, 1.0) if self.air_channel is not None else (-1, 0.0))
            B = len(tm.basis)
            if tm.kind == "linear":  # the weights live in the affine tables (_linear_tables)
                jl = tm.linear_jumps()[0][keep]
                tch = np.where(np.abs(jl).max(-1) > 0, np.asarray(self.tet_channels[p])[None], -1)
                if outer[0] >= 0:
                    tch = np.concatenate([tch, np.where(tm.boundary_mask[keep], outer[0], -1)[:, None]], 1)
                tw = np.zeros(tch.shape)
            else:
                tch, tw, _ = tm.face_channels(self.tet_channels[p], parent_channel=outer[0] if outer[0] >= 0 else None)
                tch, tw = tch[keep], tw[keep]
                tw[:, :B] *= self.mu_scale[p]
                if tch.shape[1] > B:
                    tw[:, B] *= outer[1]
            out_ch[sel, :tch.shape[1]], out_w[sel, :tch.shape[1]] = tch, tw
        return out_ch, out_w

    @property
    def linear_tets(self) -> list:
        return [p for p, (tm, _) in self.tets.items() if tm.kind == "linear"]

    def _linear_tables(self, vertices=None):
        """Affine density tables of the tetrahedral meshes with per-vertex densities:
        (lin_idx (M,) int, face_lin (1, ML, J, 4), obj_xref (1, P, 3)), numpy, or torch (differentiable
        in the vertices) when ``vertices`` (N, 3) is a torch tensor; None without such meshes."""
        from .objects.tetmesh import linear_jumps

        lin = self.linear_tets
        if not lin:
            return None
        ch, _ = self._face_tables(self.dtype)
        J = ch.shape[1]
        lin_idx = np.full(len(self.faces), -1, np.int64)
        rows, xref, n = [], {}, 0
        is_t = isinstance(vertices, torch.Tensor)
        for p in lin:
            tm, keep = self.tets[p]
            sel = np.flatnonzero(self.face_obj == p)
            lin_idx[sel] = n + np.arange(len(sel))
            n += len(sel)
            a, b = self.vertex_offsets[p], self.vertex_offsets[p + 1]
            if is_t:
                Vp = vertices[a:b].to(torch.float64)
                xr = Vp.mean(0)
                dens = self._tet_tensor(p, "densities", Vp.device).to(torch.float64)
                jl = linear_jumps(Vp, self._tet_tensor(p, "tets", Vp.device), dens,
                                  self._tet_tensor(p, "face_tets", Vp.device), xr)[torch.as_tensor(keep)]
            else:
                xr = np.asarray(tm.vertices, np.float64).mean(0)
                jl = torch.as_tensor(tm.linear_jumps(xr)[0][keep])
            q = self.parents[p]
            while q >= 0 and not self.visible[q]:
                q = self.parents[q]
            s_out = float(self.mu_scale[q]) if q >= 0 else 1.0
            B = len(tm.basis)
            tab = torch.zeros((len(sel), J, 4), dtype=torch.float64, device=jl.device)
            scale = float(self.mu_scale[p]) if self.visible[p] else 0.0
            tab = torch.cat([jl * scale, tab[:, B:]], 1) if J > B else jl * scale
            if J > B:  # the parent's material, removed inside the mesh: a constant weight on the boundary
                par = torch.as_tensor(np.where(tm.boundary_mask[keep], -s_out, 0.0), dtype=torch.float64,
                                      device=jl.device)
                tab = tab.clone()
                tab[:, B, 0] = par
            rows.append(tab)
            xref[p] = xr
        face_lin = torch.cat(rows)[None]
        X = torch.zeros((1, self.n_objects, 3), dtype=torch.float64, device=face_lin.device)
        for p, xr in xref.items():
            X[0, p] = torch.as_tensor(xr, dtype=torch.float64, device=face_lin.device)
        return lin_idx, face_lin, X

    def rasterizer(self, dtype=None, resident: bool = False) -> Rasterizer:
        """The pipeline's :class:`Rasterizer` of ``dtype``; ``resident=True``: the one whose tables and
        buffers are ``ti.ndarray`` on the device (:meth:`render` on Vulkan/Metal), a separate instance."""
        dtype = dtype or self.dtype
        key = (dtype, bool(resident))
        if key not in self._rz:
            ch, w = self._face_tables(dtype)
            rz = Rasterizer(self.faces, self.face_obj, ch, w, self.n_channels, self._ray_cameras,
                            self._raster_instances, open_objects=self.open_objects, names=self.names,
                            dtype=dtype, K=self.K, deterministic=self.deterministic, resident=bool(resident))
            self._rz[key] = rz
            self._set_linear(rz)
        return self._rz[key]

    def _set_linear(self, rz, vertices=None):
        tabs = self._linear_tables(vertices)
        rz.set_linear(*(tabs if tabs is not None else (None, None, None)))

    def physics_tables(self, dtype=None, device=None, view: int = 0):
        """(mu (C, E8), w (B, R, E8), I0) on the kernels' device: the channel materials'
        attenuation at the spectrum's energies and the Beer-Lambert weights of ``view``
        (photons x detector response; B and R as :meth:`Imaging.weights` says), padded with
        zeros to a multiple of the kernel's energy chunk. I0 = the unattenuated signal of the
        first weight set (per pixel; the mean over rows with the heel effect)."""
        dtype = dtype or self.dtype
        device = device or runtime.torch_device()
        key = (dtype, str(device), view if self.imaging.heel else 0)
        if key not in self._phys:
            e = self.spectrum.energies
            E8 = -(-len(e) // kp.E_CHUNK) * kp.E_CHUNK
            mu = np.zeros((self.n_channels, E8))
            mu[:, :len(e)] = np.stack([m.mu(e) for m in self.channel_materials])
            w0 = self.imaging.weights(self.spectrum, self.detector, self.cameras[view])
            w = np.zeros(w0.shape[:2] + (E8,))
            w[:, :, :len(e)] = w0
            I0 = float(w[0].sum(-1).mean())
            if not (I0 > 0 and np.isfinite(I0)):
                raise ValueError(f"the spectrum and detector give no signal (I0 = {I0}): check the spectrum")
            self._phys[key] = (torch.as_tensor(mu, dtype=dtype, device=device).contiguous(),
                               torch.as_tensor(w, dtype=dtype, device=device).contiguous(), I0)
        return self._phys[key]

    def _bl_groups(self, dtype, device):
        """[(instance indices or None for all, w)] : the Beer-Lambert launches of one physics pass
        (one for all instances; one per view when the weights differ per view: heel effect)."""
        if not self.imaging.heel:
            return [(None, self.physics_tables(dtype, device)[1])]
        rv = np.asarray(self._ray_view)[self._raster_instances[:, 1]]
        return [(torch.as_tensor(np.flatnonzero(rv == v), device=device), self.physics_tables(dtype, device, v)[1])
                for v in range(len(self.cameras)) if (rv == v).any()]

    def ray_lengths(self, dtype, device) -> torch.Tensor:
        """(n_ray_cameras, H, W) source-to-pixel distances, mm (the air term), computed on the device."""
        key = (dtype, str(device))
        if key not in self._ray:
            H, W = self.image_shape
            v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64, device=device),
                                  torch.arange(W, dtype=torch.float64, device=device), indexing="ij")
            pix = torch.stack([u, v, torch.ones_like(u)], -1)  # (H, W, 3)
            minv = torch.as_tensor(np.stack([c.M_inv for c in self._ray_cameras]), device=device)
            D = torch.as_tensor([c.detector_distance for c in self._ray_cameras], dtype=torch.float64, device=device)
            self._ray[key] = (D[:, None, None] * torch.einsum("kab,hwb->khwa", minv, pix).norm(dim=-1)).to(dtype)
        return self._ray[key]


    # ------------------------------------------------------------------ vertices
    def pack_vertices(self, vertices=None, dtype=None) -> torch.Tensor:
        """(S, N, 3) contiguous tensor on the kernels' device: the scene's vertices (None),
        P tensors/arrays (N_p, 3) or (S, N_p, 3), or one (S, N, 3) / (N, 3) array."""
        dtype = dtype or self.dtype
        dev = runtime.torch_device()
        if vertices is None:
            if self.default_vertices is None:
                raise ValueError("this pipeline was given faces only: pass the vertices to render")
            return torch.as_tensor(self.default_vertices, dtype=dtype, device=dev)[None].contiguous()
        if isinstance(vertices, (torch.Tensor, np.ndarray)):
            V = torch.as_tensor(vertices)
            V = V[None] if V.ndim == 2 else V
        elif self.n_objects == 0:
            V = torch.zeros((1, 0, 3), dtype=dtype)
        else:
            parts = [torch.as_tensor(v) for v in vertices]
            if len(parts) != self.n_objects:
                raise ValueError(f"got {len(parts)} vertex arrays for {self.n_objects} objects")
            S = max((p.shape[0] for p in parts if p.ndim == 3), default=1)
            parts = [(p[None].expand(S, -1, -1) if p.ndim == 2 else
                      (p.expand(S, -1, -1) if p.shape[0] == 1 else p)) for p in parts]
            for i, p in enumerate(parts):
                n = self.vertex_offsets[i + 1] - self.vertex_offsets[i]
                if p.ndim != 3 or p.shape[1:] != (n, 3) or p.shape[0] != S:
                    raise ValueError(f"vertices[{i}] ('{self.names[i]}') must have shape ({n}, 3) or (S, {n}, 3), "
                                     f"got {tuple(p.shape)}")
            V = torch.cat(parts, dim=1)
        if V.ndim != 3 or V.shape[1:] != (self.n_vertices, 3):
            raise ValueError(f"vertices must have shape (S, {self.n_vertices}, 3), got {tuple(V.shape)}")
        if not V.dtype.is_floating_point:
            raise TypeError(f"vertices must be floating point, got {V.dtype}")
        V = V.to(device=dev, dtype=dtype).contiguous()
        if not bool(torch.isfinite(V).all()):
            raise ValueError("vertices contain NaN or inf")
        return V

    # ------------------------------------------------------------------ stages
    def project(self, V: torch.Tensor, keep_slots: bool = False, check_balance: bool = False,
                tag: str = "", volume_poses=None, with_volumes: bool = True, resident: bool = False) -> RasterState:
        """Stage 1 (+ volumes and the air term): channel images (I, C, H, W) of vertex sets V (S, N, 3).

        resident : use the device-resident rasterizer (:meth:`rasterizer`): the state's L, count and
            slots are ``ti.ndarray`` (for :meth:`physics`, or :func:`~taichi_xray.kernels.buffers.to_torch`);
            mesh scenes only (:meth:`resident_ok`)."""
        if resident and not self.resident_ok():
            raise ValueError("resident projection takes mesh scenes without volumes (see Pipeline.resident_ok)")
        if kb.is_nd(V):  # vertices already on the device (the Taichi tape)
            if not resident:
                raise TypeError("a ti.ndarray of vertices needs resident=True")
            if self._pending:
                self._check_pending(kb.to_torch(V))
        else:
            self._check_pending(V)
        dt = kb.torch_dtype(V)
        if not len(self.faces):  # volumes only
            H, W = self.image_shape
            I = len(self._raster_instances)
            dev = runtime.torch_device()
            L = torch.zeros((I, self.n_channels, H, W), dtype=V.dtype, device=dev)
            st = RasterState(L, torch.zeros((I, H, W), dtype=torch.bool, device=dev), None, None, None,
                             np.zeros((I, 0), np.int64), 0, V)
            if self.volumes and with_volumes:
                with torch.no_grad():
                    st.L += self.volume_channels_image(V.dtype, st, volume_poses)
            if self.air_channel is not None:
                ray = self.ray_lengths(V.dtype, dev)
                st.L[:, self.air_channel] += ray[torch.as_tensor(self._raster_instances[:, 1], device=dev)]
            self._last_L = st.L
            return st
        rz = self.rasterizer(dt, resident)
        want_check = self.mode == "materials" and (self.check_nesting_mode == "always" or
                                                   (self.check_nesting_mode == "once" and not self._checked))
        slots = keep_slots or want_check or bool(self.in_volume)
        st = rz.forward(V, keep_slots=slots, check_balance=check_balance, buffer_tag=tag)
        if want_check and len(self.faces):
            self.check_nesting(st)
        self._checked = True
        if self.volumes and with_volumes:
            with torch.no_grad():
                st.L += self.volume_channels_image(st.L.dtype, st, volume_poses)
        if self.air_channel is not None and resident:
            pool = self._dev_pool()
            ray = pool.resident_copy(("ray", dt), self.ray_lengths(dt, runtime.torch_device()))
            cam_of = pool.resident_copy("inst_cam", torch.as_tensor(rz.inst_np[:, 1]))
            self._launch("air", kb.add_air, st.L, ray, cam_of, int(self.air_channel))
        elif self.air_channel is not None:
            ray = self.ray_lengths(V.dtype, st.L.device)
            st.L[:, self.air_channel] += ray[torch.as_tensor(rz.inst_np[:, 1], device=ray.device)]
        self._last_L = st.L
        return st

    def resident_ok(self) -> bool:
        """Whether :meth:`render` can keep this scene on the device (meshes, no volumes)."""
        return len(self.faces) > 0 and not self.volumes

    def _dev_pool(self):
        pool = self.__dict__.get("_pool")
        if pool is None:
            pool = self._pool = kb.BufferPool(True)
        return pool

    # ------------------------------------------------------------------ volumes
    def volume_projector(self, k: int, dtype):
        """The :class:`~taichi_xray.objects.volume_project.VolumeProjector` of volume k for the
        rasterizer instances' cameras (one projection per instance)."""
        from .objects.volume_project import VolumeProjector

        key = (k, dtype)
        if key not in self._vproj:
            vo = self.volumes[k]
            cams = [self._ray_cameras[c] for c in self._raster_instances[:, 1]]
            self._vproj[key] = VolumeProjector(vo.volume, cams, hu_conversion=vo.conversion, method=vo.method,
                                               step_mm=vo.step_mm, dtype=dtype)
        return self._vproj[key]

    def volume_poses(self, poses) -> dict:
        """``{volume name or index: (6,) pose or None}`` -> ``{volume index: pose}``, checked: an unknown
        name or index, a volume given twice, or a pose that is not 6 numbers is an error (never ignored)."""
        if poses is None:
            return {}
        if not isinstance(poses, dict):
            raise TypeError(f"volume_poses must be a dict {{volume name or index: (6,) tensor}}, got "
                            f"{type(poses).__name__}")
        names = [vo.name for vo in self.volumes]
        if poses and not names:
            raise ValueError("volume_poses given, but there are no volumes")
        out = {}
        for key, pose in poses.items():
            if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
                if not 0 <= int(key) < len(names):
                    raise ValueError(f"volume_poses: volume index {key} is out of range (0..{len(names) - 1})")
                k = int(key)
            elif isinstance(key, str):
                if key not in names:
                    raise ValueError(f"volume_poses: no volume named {key!r} (volumes: {', '.join(names)})")
                k = names.index(key)
            else:
                raise TypeError(f"volume_poses keys must be volume names or indices, got {type(key).__name__}")
            if k in out:
                raise ValueError(f"volume_poses gives volume {names[k]!r} twice (by name and by index)")
            if pose is not None and tuple(torch.as_tensor(pose).shape) != (6,):
                raise ValueError(f"volume_poses[{key!r}] must have shape (6,) (rotation vector rad, translation mm), "
                                 f"got {tuple(torch.as_tensor(pose).shape)}")
            out[k] = pose
        return out

    def volume_channels_image(self, dtype, st: RasterState, poses=None, slot_depth=None) -> torch.Tensor:
        """(I, C, H, W): every volume's basis-material line integrals in their channels, left out along
        the meshes inside it (from the state's slots; ``slot_depth`` a differentiable copy), minus the
        air of the volume's box when the air channel is on. ``poses``: {volume index or name: (6,)
        rotation vector rad + translation mm about the volume's centre}. Differentiable in the poses
        and in ``slot_depth``."""
        from .objects.volume_project import MeshSlots

        H, W = self.image_shape
        I = len(self._raster_instances)
        out = torch.zeros((I, self.n_channels, H, W), dtype=dtype, device=runtime.torch_device())
        poses = self.volume_poses(poses)
        for k, vo in enumerate(self.volumes):
            proj = self.volume_projector(k, dtype)
            pose = poses.get(k)
            kids = [p for p, kk in self.in_volume.items() if kk == k]
            mesh = None
            if kids:
                excl = np.zeros(max(self.n_objects, 1), np.int32)
                excl[kids] = 1
                mesh = MeshSlots(st.count, st.slot_face, st.slot_depth if slot_depth is None else slot_depth,
                                 torch.as_tensor(self.face_obj), torch.as_tensor(excl))
            img = proj(pose, mesh=mesh)  # (I, B, H, W)
            out = out.index_add(1, torch.as_tensor(self.volume_channels[k], device=out.device), img.to(dtype))
            if self.air_channel is not None:
                chord = _box_chord(proj, pose).to(dtype)
                out = out.index_add(1, torch.as_tensor([self.air_channel], device=out.device), -chord[:, None])
        return out

    def check_nesting(self, state: RasterState) -> list[str]:
        """Find objects outside their parent or overlapping others in ``state``'s slots;
        raise, warn or allow as ``overlap`` says. Returns the messages."""
        rz = self.rasterizer(kb.torch_dtype(state.V), state.resident)
        conf = rz.nesting_conflicts(state, self.parents, self.nesting_tol_mm, self.face_interior)
        msgs = []
        done = set()
        for a, b in zip(*np.nonzero(conf)):
            a, b = int(a), int(b)
            if a == b:
                msgs.append(f"object '{self.names[a]}' overlaps itself (intersecting parts or components) on "
                            f"{int(conf[a, a])} pixels: its material counts twice there")
            elif b in self._ancestors(a):
                rel = "parent" if b == self.parents[a] else "ancestor"
                msgs.append(f"object '{self.names[a]}' extends outside its {rel} '{self.names[b]}' on "
                            f"{int(conf[a, b])} pixels")
            elif (b, a) not in done:
                n = int(max(conf[a, b], conf[b, a]))
                msgs.append(f"objects '{self.names[a]}' and '{self.names[b]}' overlap on {n} pixels without one "
                            "being inside the other (declare a parent, or allow overlaps)")
                done.add((a, b))
        self._checked = True
        self.nesting_messages = msgs
        if msgs and self.overlap != "allow":
            text = (f"{self.label}: objects break their nesting: " + "; ".join(msgs) +
                    ". Declare the inner object's parent, fix the meshes, or allow overlaps (overlap='allow' in "
                    "Python, --on-nesting ignore on the command line: overlapping objects then add up).")
            if self.overlap == "raise":
                raise NestingError(text)
            warnings.warn(text, NestingWarning, stacklevel=3)
        return msgs

    def _ancestors(self, p: int) -> list[int]:
        out, q = [], self.parents[p]
        while q >= 0:
            out.append(q)
            q = self.parents[q]
        return out

    def physics(self, L: torch.Tensor) -> torch.Tensor:
        """Stage 3: Beer-Lambert sums (B, I, H, W) from channel images L (I, C, H, W) (no gradient).

        L may be a ``ti.ndarray`` (a resident :meth:`project`): the tables and the sums then stay on the
        device and the sums come back in one download (torch, host). The heel effect's weights (a
        spectrum per detector row or column) stay on the device too when every instance uses the
        same view's; with several views whose weights differ, L is downloaded first and the torch path
        runs (one launch per view)."""
        if kb.is_nd(L):
            dt = self.physics_dtype or kb.torch_dtype(L)
            dev = runtime.torch_device()
            groups = self._bl_groups(dt, dev)
            if len(groups) > 1 or (groups[0][0] is not None and len(groups[0][0]) != L.shape[0]):
                L = kb.to_torch(L, dev)
            else:
                mu = self.physics_tables(dt, dev)[0]
                w = groups[0][1]
                pool = self._dev_pool()
                mu_d, w_d = pool.resident_copy(("mu", dt), mu), pool.resident_copy(("w", dt), w)
                out = pool.get("bl_out", (w.shape[0], L.shape[0], L.shape[2], L.shape[3]), dt, zero=True)
                self._launch("bl_res", kp.beer_lambert, L, mu_d, w_d, out, self.n_channels, int(w.shape[0]),
                             self.imaging.rows_mode)
                return kb.to_torch(out, dev)
        dt = self.physics_dtype or L.dtype
        mu, w, _ = self.physics_tables(dt, L.device)
        out = torch.zeros((w.shape[0], L.shape[0], L.shape[2], L.shape[3]), dtype=dt, device=L.device)
        for idx, w in self._bl_groups(dt, L.device):
            if idx is None:
                self._launch("bl", kp.beer_lambert, L, mu, w, out, self.n_channels, int(w.shape[0]),
                             self.imaging.rows_mode)
            else:
                part = torch.zeros((w.shape[0], len(idx)) + tuple(L.shape[2:]), dtype=dt, device=L.device)
                kp.beer_lambert(L[idx].contiguous(), mu, w, part, self.n_channels, int(w.shape[0]),
                                self.imaging.rows_mode)
                out[:, idx] = part
        return out

    def _sources_combined(self, raw: torch.Tensor) -> torch.Tensor:
        """(B, I_user, H, W): the Beer-Lambert sums of each (vertex set, view) averaged over the
        view's source positions (a focal spot), from the rasterizer instances' (B, I, H, W)."""
        if len(self._inst_owner) == len(self._user_instances):
            return raw
        key = (raw.dtype, str(raw.device))
        if key not in self._combine:
            M = torch.zeros((len(self._user_instances), len(self._inst_owner)), dtype=raw.dtype, device=raw.device)
            M[torch.as_tensor(self._inst_owner), torch.arange(len(self._inst_owner))] = torch.as_tensor(
                self._inst_weight, dtype=raw.dtype)
            self._combine[key] = M
        return torch.einsum("ui,bihw->buhw", self._combine[key], raw)

    def output_image(self, raw: torch.Tensor, kind: str | None = None, noise: bool = True) -> torch.Tensor:
        """Stages 4-5 (torch, differentiable): Beer-Lambert sums (B, I, H, W) of the rasterizer
        instances -> images (I_user, H', W') of the requested kind: intensity (the detector
        reading with a detector model), transmission or line integral against the flat field."""
        kind = kind or self.output
        im = self.imaging
        x = self._sources_combined(raw)
        if not im.active:
            I = x[0]
            if kind == "intensity":
                return I
            _, _, I0 = self.physics_tables(self.physics_dtype or I.dtype, I.device)
            T = I / I0
            return T if kind == "transmission" else -torch.log(T)
        gen = im.generator(x.device) if (noise and im.noise is not None) else None
        out, flat = [], []
        for u, (_, v) in enumerate(self._user_instances):
            cam = self.cameras[v]
            water = self._water_equivalent(u) if im.scatter is not None else None
            r = im.form(x[:, u], cam, water, noise=noise, generator=gen)
            out.append(r.sum(0))  # photon counting: all energy bins together
            if kind != "intensity":
                flat.append(self._flat(v, x.dtype, x.device).sum(0))
        I = torch.stack(out)
        if kind == "intensity":
            return I
        off = im.reading_offset()
        T = (I - off) / (torch.stack(flat) - off)
        if kind == "transmission":
            return T
        floor = 0.5 / max(float((torch.stack(flat) - off).max()), 1e-30) if im.noise is not None else 1e-30
        return -torch.log(torch.clamp(T, min=floor))

    def _flat(self, view: int, dtype, device) -> torch.Tensor:
        """The expected detector reading with nothing in the beam, (B', H', W'), noise-free."""
        key = ("flat", view, dtype, str(device))
        if key not in self._phys:
            _, w, _ = self.physics_tables(dtype, device, view)  # (B, R, E8)
            H, W = self.image_shape
            s = w.sum(-1)  # (B, R)
            rows = self.imaging.rows_mode
            sig = (s[:, :, None].expand(-1, H, W) if rows == 1 else s[:, None, :].expand(-1, H, W) if rows == 2
                   else s[:, :, None].expand(-1, H, W))
            with torch.no_grad():
                self._phys[key] = self.imaging.form(sig.contiguous(), self.cameras[view], None if self.imaging.scatter
                                                    is None else torch.zeros((H, W), dtype=dtype, device=device),
                                                    noise=False)
        return self._phys[key]

    def _water_equivalent(self, u: int) -> torch.Tensor:
        """(H, W) water-equivalent thickness (mm) of user instance u, from its first source's channels
        at the spectrum's mean energy (the air channel left out)."""
        from .physics.materials import get_material
        from .physics.scatter import water_equivalent_thickness

        L = self._last_L
        if kb.is_nd(L):  # a resident render: downloaded once
            L = self._last_L = kb.to_torch(L, runtime.torch_device())
        i = int(np.flatnonzero(self._inst_owner == u)[0])
        e = float(self.spectrum.mean_energy())
        mus = np.array([float(m.mu([e])[0]) for m in self.channel_materials])
        if self.air_channel is not None:
            mus[self.air_channel] = 0.0
        w = water_equivalent_thickness(L[i].detach(), mus, float(get_material("water").mu([e])[0]))
        return torch.clamp(w, min=0.0)

    # ------------------------------------------------------------------ whole renders
    def render(self, vertices=None, *, kind: str | None = None, timings: bool = False) -> torch.Tensor:
        """Forward only: images (I, H, W) of the requested kind (channels (I, C, H, W) for
        ``path_length``), torch, on the kernels' device; no gradient.

        Device residency (:func:`taichi_xray.runtime.resident`: Vulkan, Metal, OpenGL/GLES or
        ``TAICHI_XRAY_RESIDENT=1``), for mesh scenes (:meth:`resident_ok`): faces, face tables,
        cameras, the rasterizer's buffers, the air term, the Beer-Lambert tables and sums are
        ``ti.ndarray`` on the device; per call the vertices are uploaded (not when ``vertices`` is
        None and the scene's vertices were uploaded before) and the Beer-Lambert sums (or the path
        lengths) come back in one download; the imaging stage (detector, output kind) then runs in
        torch on the host."""
        t0 = time.perf_counter()
        res = runtime.resident() and self.resident_ok()
        V = self._default_packed() if (res and vertices is None) else self.pack_vertices(vertices)
        st = self.project(V, resident=res)
        self._last_L = st.L
        if timings:
            _sync()
        t1 = time.perf_counter()
        kind = kind or self.output
        if self.mode == "objects" or kind == "path_length":
            out = kb.to_torch(st.L, runtime.torch_device())
        else:
            with torch.no_grad():
                out = self.output_image(self.physics(st.L), kind)
        if timings:
            _sync()
            self.timings = {"rasterize": (t1 - t0) * 1e3, "physics": (time.perf_counter() - t1) * 1e3}
        return out

    def _default_packed(self) -> torch.Tensor:
        """pack_vertices(None), the same tensor while the scene's vertices are the same (so that the
        resident rasterizer does not upload them again)."""
        hit = self.__dict__.get("_Vdef")
        if hit is None or hit[0] is not self.default_vertices or hit[1].dtype != self.dtype:
            hit = self._Vdef = (self.default_vertices, self.pack_vertices(None))
        return hit[1]

    def render_torch(self, vertices, mu_scale=None, densities=None, volume_poses=None) -> torch.Tensor:
        """Differentiable render: P vertex tensors (N_p, 3) or (S, N_p, 3) -> (I, H, W) images of
        ``output`` (or (I, P, H, W) path lengths), with gradients to the vertices, to ``mu_scale``
        (P,) per-object attenuation factors, to the densities of tetrahedral meshes
        (``densities = {object name or index: (T, B) or (N, B) tensor}``) and to the poses of
        volumes (``volume_poses = {volume name or index: (6,) rotation vector rad, translation mm}``)."""
        from .torch.function import PipelineFunction

        volume_poses = self.volume_poses(volume_poses)  # checked before anything is rendered

        parts = [vertices] if isinstance(vertices, torch.Tensor) and vertices.ndim == 2 and self.n_objects == 1 \
            else list(vertices)
        if not parts:  # volumes only
            parts = [torch.zeros((0, 3), dtype=self.dtype)]
        dt = parts[0].dtype
        if dt not in (torch.float32, torch.float64):
            raise TypeError(f"vertices must be float32 or float64, got {dt}")
        for i, v in enumerate(parts):
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"vertices[{i}] must be a torch tensor, got {type(v).__name__}")
            if v.dtype != dt:
                raise TypeError(f"all vertex tensors must share one dtype; vertices[{i}] is {v.dtype}, "
                                f"vertices[0] is {dt}")
        V = self.pack_vertices(parts, dtype=dt) if self.n_objects > 1 or parts[0].ndim == 3 else \
            self.pack_vertices(parts[0] if self.n_objects else [], dtype=dt)
        if mu_scale is not None:
            if self.mode == "objects":
                raise ValueError("mu_scale needs a pipeline with materials")
            if torch.as_tensor(mu_scale).shape != (self.n_objects,):
                raise ValueError(f"mu_scale must have shape ({self.n_objects},), got "
                                 f"{tuple(torch.as_tensor(mu_scale).shape)}")
        if densities and not self.tets:
            raise ValueError("densities are for tetrahedral meshes; this pipeline has none")
        self._check_pending(V)  # faces given alone: orientation checked with these vertices (once)
        tables = None
        moving_lin = bool(self.linear_tets) and (V.requires_grad or V.shape[0] > 1 or self.default_vertices is None
                                                 or not np.allclose(V[0].detach().cpu().numpy(), self.default_vertices))
        if mu_scale is not None or densities or moving_lin:
            if V.shape[0] > 1 and self.linear_tets:
                raise ValueError("a batch of vertex sets with per-vertex tetrahedral densities: render them one at a "
                                 "time")
            ch, W, lin = self.torch_face_tables(mu_scale, densities, V[0] if self.linear_tets else None, dtype=dt)
            tables = (ch, W, lin)
        weights = () if tables is None else (tables[1],) + (tuple(tables[2][1:]) if tables[2] else ())
        if self.volumes:
            from .torch.function import PhysicsFunction, RasterFunction

            L, sd = RasterFunction.apply(self, V, tables, *weights)
            st = self._torch_state
            L = L + self.volume_channels_image(L.dtype, st, volume_poses, sd if self.in_volume else None)
            out = PhysicsFunction.apply(self, L)
            return self.output_image(out)
        out = PipelineFunction.apply(self, V, tables, *weights)
        if self.mode == "objects":
            return out
        return self.output_image(out)

    # ------------------------------------------------------------------ Taichi-native autodiff
    def taichi_forward(self, V: torch.Tensor, out: torch.Tensor) -> None:
        """Forward for ``ti.ad.Tape``: rasterize V (S, N, 3) and add the intensity into ``out``
        (1, I, H, W), of the physics dtype (zero on entry). Inside a tape, the rasterizer is recorded through
        ``ti.ad.grad_replaced`` (its backward is the hand-written z-buffer gradient over the
        saved slots) and Beer-Lambert as a plain kernel (Taichi's autodiff): after the tape,
        ``V.grad`` holds dLoss/dV. V and out must be torch tensors with requires_grad=True
        (Taichi keeps their gradients in ``.grad``), or both ``ti.ndarray`` with needs_grad=True: the
        resident path (Vulkan/Metal, :func:`taichi_xray.runtime.resident`; mesh scenes), where the
        rasterizer, its gradient and Beer-Lambert read and write only device arrays. Every gradient
        buffer must be zero before the tape (Taichi accumulates)."""
        if self.mode != "materials":
            raise ValueError("taichi_forward needs a pipeline with materials")
        L = self._tape_buffer(V)
        _raster_taped(self, V, L)
        if kb.is_nd(V):
            dt = self.physics_dtype or kb.torch_dtype(V)
            mu, w, _ = self.physics_tables(dt, runtime.torch_device())
            pool = self._dev_pool()
            mu, w = pool.resident_copy(("mu", dt), mu), pool.resident_copy(("w", dt), w)
        else:
            mu, w, _ = self.physics_tables(self.physics_dtype or V.dtype, V.device)
        kp.beer_lambert(L, mu, w, out, self.n_channels, int(w.shape[0]), 0)

    def _tape_buffer(self, V):
        if kb.is_nd(V):  # resident: V, out and L are ti.ndarray with gradients
            if not self.resident_ok():
                raise ValueError("a resident Taichi tape takes mesh scenes without volumes")
            dt = kb.torch_dtype(V)
            rz = self.rasterizer(dt, True)
            shape = (len(rz.inst_np), self.n_channels, rz.H, rz.W)
            L = self.__dict__.get("_tape_L_nd")
            if L is None or tuple(L.shape) != shape or L.dtype != kb.TI_DTYPE[dt]:
                L = self._tape_L_nd = ti.ndarray(kb.TI_DTYPE[dt], shape, needs_grad=True)
            L.grad.fill(0)
            return L
        rz = self.rasterizer(V.dtype)
        shape = (len(rz.inst_np), self.n_channels, rz.H, rz.W)
        L = self.__dict__.get("_tape_L")
        if L is None or tuple(L.shape) != shape or L.dtype != V.dtype:
            L = torch.zeros(shape, dtype=V.dtype, device=V.device, requires_grad=True)
            self._tape_L = L
        if L.grad is None:
            L.grad = torch.zeros_like(L)
        else:
            L.grad.zero_()
        return L


@ti.ad.grad_replaced
def _raster_taped(pipe: Pipeline, V: torch.Tensor, L: torch.Tensor) -> None:
    if kb.is_nd(V):  # resident: the device's vertices, the device's path lengths
        st = pipe.project(V, keep_slots=True, tag="tape", resident=True)
        L.copy_from(st.L)
    else:
        st = pipe.project(V.detach(), keep_slots=True, tag="tape")
        with torch.no_grad():
            L.copy_(st.L)
    pipe._tape_state = st


@ti.ad.grad_for(_raster_taped)
def _raster_taped_grad(pipe: Pipeline, V: torch.Tensor, L: torch.Tensor) -> None:
    st = pipe._tape_state
    if kb.is_nd(V):
        pipe.rasterizer(kb.torch_dtype(V), True).backward(st, L.grad, grad_V=V.grad)
        return
    if V.grad is None:
        V.grad = torch.zeros_like(V)
    pipe.rasterizer(V.dtype).backward(st, L.grad, grad_V=V.grad)


# ----------------------------------------------------------------------------------------
def _check_parents(parents, P):
    for i, p in enumerate(parents):
        if p < -1 or p >= P:
            raise ValueError(f"parents[{i}] = {p} is not -1 or an object index in [0, {P})")
        if p == i:
            raise ValueError(f"object {i} is its own parent")
    for i in range(P):
        seen, j = set(), i
        while j != -1:
            if j in seen:
                raise ValueError(f"parents contain a cycle through object {j}")
            seen.add(j)
            j = parents[j]


def _front_facing(cam: Camera, vertices: np.ndarray) -> Camera:
    """A camera whose projection matrix puts the scene in front of the source.

    A 3x4 projection matrix is defined up to scale, and calibration tools hand it over
    with either sign; ``P`` and ``-P`` map points to the same pixels but put opposite
    half-spaces in front of the source. When every vertex is behind the source
    (w < 0 for all), the sign is flipped (with a warning); a scene on both sides is left
    alone (the rasterizer then reports the objects that straddle the source plane).
    """
    lo, hi = vertices.min(0), vertices.max(0)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    _, w = cam.project(corners)
    if np.all(w < 0):
        _, wv = cam.project(vertices)
        if np.all(wv < 0):
            warnings.warn("the projection matrix puts the whole scene behind the source (a P given with the "
                          "opposite sign); using -P, which projects every point to the same pixel with the scene "
                          "in front", RuntimeWarning, stacklevel=4)
            return cam.flipped()
    return cam


def _box_chord(proj, pose=None) -> torch.Tensor:
    """(I, H, W) length (mm) of each pixel's ray inside the volume's box (from the source on),
    differentiable in the pose: the slab method in voxel-index space, where the ray of pixel
    (c, r) is ``o + lam G (c, r, 1)`` with ``lam`` the depth and ``|M_inv (c, r, 1)|`` mm per unit."""
    o, G = proj.rays(pose)
    o, G = o.to(torch.float64), G.to(torch.float64)
    pix = proj._pix.to(torch.float64)  # (H, W, 3)
    g = torch.einsum("vab,hwb->vhwa", G, pix)  # (I, H, W, 3)
    n = torch.as_tensor(proj.volume.shape, dtype=torch.float64, device=g.device)
    big = torch.finfo(torch.float64).max / 4
    safe = torch.where(g.abs() > 1e-300, g, torch.full_like(g, 1e-300))
    t1 = (-0.5 - o[:, None, None, :]) / safe
    t2 = (n - 0.5 - o[:, None, None, :]) / safe
    lo = torch.minimum(t1, t2).amax(-1).clamp(min=0.0)
    hi = torch.maximum(t1, t2).amin(-1).clamp(max=big)
    d = torch.einsum("vab,hwb->vhwa", proj._minv64.to(torch.float64), pix).norm(dim=-1)
    return ((hi - lo).clamp(min=0.0) * d)
