"""Reproducible pelvis landmarks, defined algorithmically on surface meshes.

The 14 landmarks are **vertex indices** of the template (the concatenation
hip_left, hip_right, sacrum, in that order), so they move with the mesh under a
pose (``landmarks = posed_vertices[indices]``) and follow a shape model built
on the same vertices (``shape_model.vertices(beta)[indices]``).

Frame: the meshes must be in the DICOM **LPS** patient frame (+x patient's
left, +y posterior, +z superior), roughly aligned with the patient's axes (as
meshes made from an axial CT are). Each landmark is an extreme vertex of one
bone, along an anatomical direction, within a sub-region given by fractions of
that bone's own bounding box; ties are broken by the lowest vertex index, so
the result is deterministic given the mesh. "Lateral" is ``+x`` for the left
hip bone and ``-x`` for the right one; "medial" the opposite. For each hip
bone, ``z_frac`` is the height fraction ``(z - z_min) / (z_max - z_min)``:

===========================  ==========================================================
landmark (per hip bone)       definition
===========================  ==========================================================
ASIS-like                     most anterior (min y) vertex with z_frac >= 0.55
PSIS-like                     most posterior (max y) vertex with z_frac >= 0.55
iliac crest top               most superior (max z) vertex
pubic symphysis-like          most medial vertex with z_frac <= 0.45
ischial (inferior-posterior)  min of ``z - 0.5 y`` (lowest, then most posterior)
acetabular rim (lateral)      most lateral vertex with 0.15 <= z_frac <= 0.5
===========================  ==========================================================

Sacrum: *sacral promontory-like*: most anterior (min y) vertex of the sacrum
with z_frac >= 0.8; *sacral apex-like*: most inferior (min z) vertex.

These are surrogates of the anatomical landmarks (ASIS, PSIS, ...), not
their clinical definitions: they are chosen to be well spread over the pelvis
and reproducible. On the 3 mm TotalSegmentator pelvis the hip bones are cut
by the volume's lower border, so the "ischial" points lie on that cut.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PELVIS_LANDMARK_NAMES", "PelvisLandmarks", "pelvis_landmarks", "extreme_vertex"]

_HIP_NAMES = ["ASIS", "PSIS", "iliac_crest_top", "pubic_symphysis", "ischial_inferior", "acetabular_rim"]
PELVIS_LANDMARK_NAMES = ([f"{n}_left" for n in _HIP_NAMES] + [f"{n}_right" for n in _HIP_NAMES]
                         + ["sacral_promontory", "sacral_apex"])


def extreme_vertex(vertices, score, region=None) -> int:
    """Index of the vertex with the largest ``score`` inside ``region``.

    vertices: (N, 3).  score: (N,) values or a direction (3,) (score = v . d).
    region: optional (N,) bool.  Ties -> lowest index."""
    v = np.asarray(vertices, dtype=np.float64)
    s = np.asarray(score, dtype=np.float64)
    if s.shape == (3,) and v.shape[0] != 3:
        s = v @ s
    if s.shape != (len(v),):
        raise ValueError(f"score must be (N,) or a direction (3,), got {s.shape}")
    if region is not None:
        region = np.asarray(region, dtype=bool)
        if not region.any():
            raise ValueError("landmark region is empty")
        s = np.where(region, s, -np.inf)
    return int(np.argmax(s))


def _hip(v: np.ndarray, side: int) -> list[int]:
    """side = +1 for the left hip (lateral = +x), -1 for the right."""
    z = v[:, 2]
    zf = (z - z.min()) / max(z.max() - z.min(), 1e-9)
    x, y = v[:, 0], v[:, 1]
    return [
        extreme_vertex(v, -y, zf >= 0.55),  # ASIS-like
        extreme_vertex(v, y, zf >= 0.55),  # PSIS-like
        extreme_vertex(v, z),  # iliac crest top
        extreme_vertex(v, -side * x, zf <= 0.45),  # pubic symphysis-like (medial)
        extreme_vertex(v, -(z - 0.5 * y)),  # ischial: lowest, then posterior
        extreme_vertex(v, side * x, (zf >= 0.15) & (zf <= 0.5)),  # acetabular rim (lateral)
    ]


@dataclass
class PelvisLandmarks:
    """indices (14,) int64 into the concatenated vertices (hip_left, hip_right, sacrum);
    names (14,); part (14,) 0/1/2 for hip_left/hip_right/sacrum."""

    indices: np.ndarray
    names: list
    part: np.ndarray

    def positions(self, vertices) -> np.ndarray:
        """Landmark positions (14, 3) [or (B, 14, 3)] from concatenated vertices (N, 3) [or (B, N, 3)]."""
        v = np.asarray(vertices)
        return v[..., self.indices, :]


def pelvis_landmarks(hip_left, hip_right, sacrum) -> PelvisLandmarks:
    """14 pelvis landmarks (see module docs) as indices into ``concatenate([hip_left, hip_right, sacrum])``.

    Each argument: vertices (N_i, 3) mm in LPS, or a Mesh."""
    parts = [np.asarray(getattr(p, "vertices", p), dtype=np.float64) for p in (hip_left, hip_right, sacrum)]
    for name, p in zip(("hip_left", "hip_right", "sacrum"), parts):
        if p.ndim != 2 or p.shape[1] != 3 or len(p) < 4:
            raise ValueError(f"{name} must be vertices (N, 3) with N >= 4, got {p.shape}")
    if parts[0][:, 0].mean() < parts[1][:, 0].mean():
        raise ValueError("hip_left lies to the right of hip_right (LPS: +x is the patient's left); "
                         "are the meshes swapped or not in LPS?")
    off = np.cumsum([0] + [len(p) for p in parts])
    idx = [i + off[0] for i in _hip(parts[0], +1)] + [i + off[1] for i in _hip(parts[1], -1)]
    s = parts[2]
    z = s[:, 2]
    zf = (z - z.min()) / max(z.max() - z.min(), 1e-9)
    idx += [extreme_vertex(s, -s[:, 1], zf >= 0.8) + off[2], extreme_vertex(s, -z) + off[2]]
    part = np.array([0] * 6 + [1] * 6 + [2] * 2, dtype=np.int64)
    return PelvisLandmarks(np.array(idx, dtype=np.int64), list(PELVIS_LANDMARK_NAMES), part)
