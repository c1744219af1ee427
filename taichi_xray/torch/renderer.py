"""``XRayRenderer``: a torch module from vertex tensors to X-ray images.

It holds a :class:`~taichi_xray.pipeline.Pipeline` (faces, materials, nesting,
cameras, spectrum, detector and work buffers stay on the kernels' device
between calls) and renders through :class:`~taichi_xray.torch.function.PipelineFunction`:

    vertices (P tensors) --rasterizer--> per-material path lengths (I, C, H, W)
        --Beer-Lambert (Taichi kernel, Taichi autodiff backward)--> intensity I
        --> intensity | transmission I/I0 | line integral -log(I/I0)

All views and poses of a call are rasterized in one launch. Gradients reach
the vertices (hence any pose or shape parameters that made them) and the
per-object attenuation scale ``mu_scale``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..camera import Camera
from ..mesh import Mesh
from ..physics import Detector, Spectrum
from ..pipeline import OUTPUTS, Pipeline

__all__ = ["XRayRenderer"]


class XRayRenderer(nn.Module):
    """Render X-ray images of P nested meshes from V views, differentiably.

    Parameters
    ----------
    faces : sequence of P integer arrays (M_p, 3), or Mesh objects (their faces are used;
        their vertices are the default when ``forward`` gets none).
    cameras : a Camera or a sequence of V cameras of one detector size.
    materials : P material specs (names like ``"cortical_bone"``, see
        :func:`taichi_xray.physics.get_material`). Not needed for ``output="path_length"``.
    parents : P parent indices (-1 for none; ``P + k`` inside volume k); a child's material
        replaces its parent's.
    spectrum : Spectrum (default: monochromatic 60 keV).
    detector : Detector or None (ideal photon counter).
    output : ``"line_integral"`` (default, -log(I/I0)), ``"transmission"``, ``"intensity"``
        or ``"path_length"`` (returns (B, P, H, W) path lengths per object).
    air : attenuate by the air between source and detector (cameras need pixel_spacing),
        as ``[output] air = true`` does in scene files.
    K : slot capacity (None = grow as needed; never shrinks).
    deterministic : bitwise reproducible images and gradients (slots summed in face order,
        a face-parallel backward without atomics). Slower.
    overlap : "raise" (default), "warn" or "allow" when objects break their nesting
        (checked on the first call from the K-slot depth intervals).
    names : P object names for messages.
    volumes : CT volumes rendered with the meshes (:class:`~taichi_xray.pipeline.VolumeObject`
        items, or ``Volume`` objects with the defaults); P may then be 0 (volumes only).

    Call
    ----
    ``renderer(vertices, mu_scale=None, volume_poses=None)`` with ``vertices`` a sequence of P
    tensors, each (N_p, 3) or (B, N_p, 3) (a batch of poses/shapes), float32 or float64.
    Returns (B, H, W) where B = max(number of poses, number of views); a single
    pose is rendered in every view, a single view renders every pose, otherwise
    pose b is rendered in view b. ``mu_scale`` (P,) multiplies each object's mu.
    ``volume_poses`` ``{volume name or index: (6,) tensor}``: rotation vector (rad) and
    translation (mm) of the volume about its own box centre (``Volume.centre``),
    ``v' = R (v - centre) + centre + t`` on top of its affine (differentiable; see
    :meth:`taichi_xray.pipeline.Pipeline.render_torch`).
    """

    def __init__(self, faces: Sequence, cameras: Camera | Sequence[Camera], materials: Sequence | None = None,
                 parents: Sequence[int] | None = None, spectrum: Spectrum | None = None,
                 detector: Detector | None = None, output: str = "line_integral", K: int | None = None,
                 deterministic: bool = False, air: bool = False, overlap: str = "raise",
                 names: Sequence[str] | None = None, dtype=torch.float32, volumes: Sequence | None = None):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        faces = list(faces)
        volumes = list(volumes or [])
        if not faces and not volumes:
            raise ValueError("no meshes given")
        if not faces and materials is None:
            materials = []
        if output != "path_length" and (materials is None or len(materials) != len(faces)):
            raise ValueError(f"give one material per mesh ({len(faces)}) for output={output!r}")
        self._args = dict(materials=None if output == "path_length" else list(materials),
                          parents=None if parents is None else list(parents), spectrum=spectrum, detector=detector,
                          output=output, K=K, deterministic=deterministic, air=air, overlap=overlap,
                          names=None if names is None else list(names), dtype=dtype, volumes=volumes)
        self._faces = faces
        self.pipeline = Pipeline(faces, cameras, **self._args)
        self.output = output
        self._scaled: dict = {}

    # ------------------------------------------------------------------ properties
    @property
    def cameras(self) -> list:
        return self.pipeline.cameras

    @cameras.setter
    def cameras(self, cams) -> None:
        self.pipeline.set_cameras(cams)
        self._scaled.clear()

    @property
    def image_shape(self) -> tuple[int, int]:
        return self.pipeline.image_shape

    @property
    def faces(self) -> list:
        return [np.asarray(f.faces if isinstance(f, Mesh) else f) for f in self._faces]

    @property
    def spectrum(self) -> Spectrum:
        return self.pipeline.spectrum

    @property
    def detector(self):
        return self.pipeline.detector

    @property
    def parents(self) -> list:
        return self.pipeline.parents

    @property
    def volumes(self) -> list:
        """The pipeline's :class:`~taichi_xray.pipeline.VolumeObject` items (shared by ``at_scale``)."""
        return self.pipeline.volumes

    @property
    def volume_names(self) -> list:
        return [v.name for v in self.pipeline.volumes]

    def at_scale(self, factor: int) -> "XRayRenderer":
        """A renderer of the same objects on ``factor`` x ``factor`` binned detectors (see
        :func:`taichi_xray.fit.register.downsample_camera`), cached: coarse registration levels.
        Volumes come along (the same ``VolumeObject`` items, their device densities shared)."""
        if factor == 1:
            return self
        if factor not in self._scaled:
            from ..fit.register import downsample_camera

            r = XRayRenderer(self._faces, [downsample_camera(c, factor) for c in self.cameras], **self._args)
            self._scaled[factor] = r
        return self._scaled[factor]

    # ------------------------------------------------------------------ call
    def forward(self, vertices: Sequence[torch.Tensor], mu_scale=None, volume_poses=None) -> torch.Tensor:
        volume_poses = self.pipeline.volume_poses(volume_poses) or None  # checked before anything runs
        if isinstance(vertices, torch.Tensor):
            vertices = [vertices]
        vertices = list(vertices)
        P = self.pipeline.n_objects
        if len(vertices) != P:
            raise ValueError(f"got {len(vertices)} vertex tensors for {P} meshes")
        for i, v in enumerate(vertices):
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"vertices[{i}] must be a torch tensor, got {type(v).__name__}")
            if v.ndim not in (2, 3):
                raise ValueError(f"vertices[{i}] must have shape (N, 3) or (B, N, 3), got {tuple(v.shape)}")
        n_pose = max([v.shape[0] for v in vertices if v.ndim == 3], default=1)
        for i, v in enumerate(vertices):
            if v.ndim == 3 and v.shape[0] not in (1, n_pose):
                raise ValueError(f"vertices[{i}] has batch {v.shape[0]}, others have {n_pose}")
        n_view = len(self.cameras)
        if n_pose > 1 and n_view > 1 and n_pose != n_view:
            raise ValueError(f"{n_pose} poses and {n_view} views: give one pose, one view, or as many of each")
        if n_pose == 1:
            inst = [(0, v) for v in range(n_view)]
        elif n_view == 1:
            inst = [(b, 0) for b in range(n_pose)]
        else:
            inst = [(b, b) for b in range(n_pose)]
        self.pipeline.set_instances(np.asarray(inst, np.int32))
        if n_pose == 1:
            vertices = [v[0] if v.ndim == 3 else v for v in vertices]
        else:
            vertices = [v if v.ndim == 3 else v[None] for v in vertices]
        if volume_poses:
            return self.pipeline.render_torch(vertices, mu_scale, volume_poses=volume_poses)
        return self.pipeline.render_torch(vertices, mu_scale)
