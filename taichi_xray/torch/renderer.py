"""``XRayRenderer``: a torch module from vertex tensors to X-ray images.

Pipeline (every step differentiable):

    vertices (P tensors) --PathLengthFunction--> L (P, H, W) per view
        --exclusive_matrix--> L_excl (P, H, W)   (each object's own material)
        --BeerLambertFunction--> I (H, W)        (polychromatic, Taichi autodiff backward)
        --> intensity | transmission I/I0 | line integral -log(I/I0)

Gradients reach the vertices (hence any pose or shape parameters that made
them) and the per-material attenuation scale ``mu_scale``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..camera import Camera
from ..mesh import Mesh
from ..physics import Detector, Spectrum, get_material, mu_matrix
from ..physics.attenuation import BeerLambertFunction, exclusive_matrix
from .function import path_lengths

__all__ = ["XRayRenderer"]

_OUTPUTS = ("line_integral", "transmission", "intensity", "path_length")


class XRayRenderer(nn.Module):
    """Render X-ray images of P nested meshes from V views, differentiably.

    Parameters
    ----------
    faces : sequence of P integer arrays (M_p, 3), or Mesh objects (their faces are used).
    cameras : a Camera or a sequence of V cameras of one detector size.
    materials : P material specs (names like ``"cortical_bone"``, see
        :func:`taichi_xray.physics.get_material`). Not needed for ``output="path_length"``.
    parents : P parent indices (-1 for none); a child's length is removed from its parent's.
    spectrum : Spectrum (default: monochromatic 60 keV).
    detector : Detector or None (ideal photon counter).
    output : ``"line_integral"`` (default, -log(I/I0)), ``"transmission"``, ``"intensity"``
        or ``"path_length"`` (returns (B, P, H, W) path lengths).
    K : slot capacity (None = grow as needed).
    deterministic : bitwise reproducible images and gradients: path lengths summed
        in face order, a face-parallel path-length backward without atomics, and
        Beer-Lambert evaluated with torch operations (whose CPU backward is
        deterministic) instead of the Taichi kernel. Slower; for debugging and
        reproducible studies.

    Call
    ----
    ``renderer(vertices, mu_scale=None)`` with ``vertices`` a sequence of P tensors,
    each (N_p, 3) or (B, N_p, 3) (a batch of poses/shapes), float32 or float64.
    Returns (B, H, W) where B = max(number of poses, number of views); a single
    pose is rendered in every view, a single view renders every pose, otherwise
    pose b is rendered in view b. ``mu_scale`` (P,) multiplies each material's mu.
    """

    def __init__(
        self,
        faces: Sequence,
        cameras: Camera | Sequence[Camera],
        materials: Sequence | None = None,
        parents: Sequence[int] | None = None,
        spectrum: Spectrum | None = None,
        detector: Detector | None = None,
        output: str = "line_integral",
        K: int | None = None,
        deterministic: bool = False,
    ):
        super().__init__()
        if output not in _OUTPUTS:
            raise ValueError(f"output must be one of {_OUTPUTS}, got {output!r}")
        self.faces = [np.asarray(f.faces if isinstance(f, Mesh) else f, dtype=np.int64) for f in faces]
        P = len(self.faces)
        if P == 0:
            raise ValueError("no meshes given")
        self.cameras = [cameras] if isinstance(cameras, Camera) else list(cameras)
        if not self.cameras or not all(isinstance(c, Camera) for c in self.cameras):
            raise TypeError("cameras must be a Camera or a sequence of Camera objects")
        if len({(c.height, c.width) for c in self.cameras}) != 1:
            raise ValueError("all cameras must have the same detector size")
        self.output = output
        self.K = K
        self.deterministic = bool(deterministic)
        self.parents = list(parents) if parents is not None else [-1] * P
        if len(self.parents) != P:
            raise ValueError(f"parents has {len(self.parents)} entries for {P} meshes")
        self.register_buffer("excl", torch.as_tensor(exclusive_matrix(self.parents), dtype=torch.float64))
        if output != "path_length":
            if materials is None or len(materials) != P:
                raise ValueError(f"give one material per mesh ({P}) for output={output!r}")
            self.materials = [get_material(m) for m in materials]
            self.spectrum = spectrum if spectrum is not None else Spectrum.monochromatic(60.0)
            self.detector = detector
            e = self.spectrum.energies
            w = self.spectrum.photons * (detector.response(e) if detector is not None else 1.0)
            self.register_buffer("mu", torch.as_tensor(mu_matrix(self.materials, e), dtype=torch.float64))
            self.register_buffer("weights", torch.as_tensor(np.asarray(w, dtype=np.float64)))

    @property
    def image_shape(self) -> tuple[int, int]:
        return self.cameras[0].height, self.cameras[0].width

    def _physics(self, L: torch.Tensor, mu_scale) -> torch.Tensor:
        dt = L.dtype
        key = (L.device, dt, self.mu.device, self.mu.data_ptr())
        cache = self.__dict__.setdefault("_cast_cache", {})
        if key not in cache:  # cast the float64 buffers once per device and dtype, not per call
            cache.clear()
            cache[key] = tuple(b.to(device=L.device, dtype=dt) for b in (self.excl, self.mu, self.weights))
        excl, mu, w = cache[key]
        L_excl = torch.einsum("pq,qhw->phw", excl, L).contiguous()
        if mu_scale is not None:
            mu_scale = torch.as_tensor(mu_scale, dtype=dt, device=L.device)
            if mu_scale.shape != (mu.shape[0],):
                raise ValueError(f"mu_scale must have shape ({mu.shape[0]},), got {tuple(mu_scale.shape)}")
            mu = mu * mu_scale[:, None]
        if self.deterministic:
            I = torch.einsum("e,ehw->hw", w, torch.exp(-torch.einsum("pe,phw->ehw", mu, L_excl)))
        else:
            I = BeerLambertFunction.apply(L_excl, mu.contiguous(), w)
        if self.output == "intensity":
            return I
        T = I / w.sum()
        return T if self.output == "transmission" else -torch.log(T)

    def forward(self, vertices: Sequence[torch.Tensor], mu_scale=None) -> torch.Tensor:
        if isinstance(vertices, torch.Tensor):
            vertices = [vertices]
        vertices = list(vertices)
        if len(vertices) != len(self.faces):
            raise ValueError(f"got {len(vertices)} vertex tensors for {len(self.faces)} meshes")
        batched = [v.ndim == 3 for v in vertices]
        n_pose = max([v.shape[0] for v in vertices if v.ndim == 3], default=1)
        for i, v in enumerate(vertices):
            if v.ndim == 3 and v.shape[0] not in (1, n_pose):
                raise ValueError(f"vertices[{i}] has batch {v.shape[0]}, others have {n_pose}")
        n_view = len(self.cameras)
        if n_pose > 1 and n_view > 1 and n_pose != n_view:
            raise ValueError(f"{n_pose} poses and {n_view} views: give one pose, one view, or as many of each")
        B = max(n_pose, n_view)
        out = []
        for b in range(B):
            cam = self.cameras[b if n_view > 1 else 0]
            vb = [(v[b if v.shape[0] > 1 else 0] if isb else v) for v, isb in zip(vertices, batched)]
            L = path_lengths(vb, self.faces, cam, K=self.K, deterministic=self.deterministic)
            out.append(L if self.output == "path_length" else self._physics(L, mu_scale))
        return torch.stack(out)
