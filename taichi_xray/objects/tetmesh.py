"""Tetrahedral meshes with heterogeneous density, for the signed-depth rasterizer.

Why: a surface mesh has one material at one density (Shetty et al. name this
the method's limit and suggest "a tetrahedral mesh with learned bone density
distributions"). The signed-depth (K-slot) method extends to it without
sorting the crossings of a ray:

* **Constant density per tetrahedron.** Along a ray ``x(t) = s + t d`` (``|d| = 1``)
  the density is piecewise constant; integrating by parts, with zero density
  outside the mesh,

      ∫ ρ dt = Σ_faces sign · t · (ρ_a − ρ_b),

  where every triangle of the mesh is counted once, oriented so that its normal
  points from the tetrahedron ``a`` behind it into the tetrahedron ``b`` in
  front of it (``b = −1``: outside, ρ_b = 0), ``t`` is the depth of the ray's
  crossing and ``sign = +1`` where the ray crosses along the normal (leaves
  ``a``), −1 against it. This is the paper's eq. 1 with a weight per face
  (:meth:`TetMesh.face_jumps`).
* **Linear density per tetrahedron** (per-vertex values, P1): inside ``T``,
  ``ρ(x) = a_T + g_T · x`` and along the ray ``ρ = α_T + β_T t``; each crossed
  face adds ``sign · [t (α_a − α_b) + t²/2 (β_a − β_b)]``. The sum is
  order-independent. For float32, ``t`` must be measured from a point near the
  object (``τ = t − t_ref``): with ``x0 = s + t_ref d``, ``α = c + Δg·(x0 − x_ref)``
  and ``β = Δg·d``, where ``c = Δa + Δg·x_ref`` is the jump of the field at a
  reference point ``x_ref`` of the mesh (:meth:`TetMesh.linear_jumps`).

Several basis materials (e.g. water and cortical bone) give one such integral
each. ``densities`` are **relative densities**: the fraction of each basis
material at its own nominal density (dimensionless; 1 = the material as
:func:`taichi_xray.physics.materials.get_material` defines it), so each channel
image is an equivalent path length in mm and ``μ(E) = Σ_b f_b μ_b(E)``, as in
:mod:`taichi_xray.ct.projector`.

Conventions: vertices (N, 3) float64 mm (LPS world frame); tets (T, 4) int64
with positive signed volume ``det[v1−v0, v2−v0, v3−v0] / 6 > 0`` (VTK's and
meshio's ``tetra`` order). The outward faces of tet ``(0, 1, 2, 3)`` are
``(1, 2, 3), (0, 3, 2), (0, 1, 3), (0, 2, 1)`` (counter-clockwise seen from
outside, as :class:`~taichi_xray.mesh.Mesh` faces).

Checks on construction (each a ``ValueError`` naming the problem, unless repaired):

* NaN/inf vertices or densities, negative densities, out-of-range indices,
  a tet using a vertex twice;
* inverted tets (negative signed volume): **repaired** by swapping vertices 2
  and 3, with a :class:`TetMeshWarning` giving their number (a whole file
  written in the opposite convention is common and harmless); ``repair=False``
  raises instead. A mesh that is *folded* (tets overlapping after the repair)
  is caught by the pairing check below;
* degenerate tets: ``|volume| <= 1e-10 · (longest edge)³`` or
  ``<= 1e-15 · (bounding-box diagonal)³``;
* non-conforming faces: a triangle shared by more than two tets (duplicates,
  overlaps), an interior triangle whose two tets lie on the same side of it
  (folded or tangled mesh), or a boundary face with a tet right outside it (a
  face only partly covered by its neighbours: hanging vertex; an interface
  triangulated differently on its two sides; parts that overlap or touch). The
  last is found geometrically (a probe just outside each boundary face, located
  with a k-d tree): every tet's own boundary is closed, so the boundary faces of
  *any* set of tets close up combinatorially and edge counts cannot see it;
* unused vertices: error, or dropped with a warning (``drop_unused=True``,
  which :meth:`TetMesh.load` uses).

Note that the face formula itself does not need a conforming mesh: summing each
tet's own four faces with weight ρ_T ("tet soup", 4T faces) is exact for any set
of tets (overlapping densities add); a conforming mesh merges each interior pair
into one face with the jump (about 2T faces) and makes the rasterizer's
watertight tie rule exact along shared edges. Not detected: tets that
interpenetrate without any boundary face inside another tet.
"""
from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass

import numpy as np

from ..mesh import Mesh

__all__ = ["TetMesh", "TetMeshWarning", "TetReport", "LOCAL_FACES", "tet_volumes", "constant_jumps",
           "affine_coefficients", "linear_jumps"]

# outward faces of a positively oriented tet (0, 1, 2, 3); face k is opposite vertex k
LOCAL_FACES = np.array([[1, 2, 3], [0, 3, 2], [0, 1, 3], [0, 2, 1]], dtype=np.int64)
DEFAULT_BASIS = ("water", "cortical_bone")
_DEGENERATE_EDGE = 1e-10
_DEGENERATE_BOX = 1e-15


class TetMeshWarning(UserWarning):
    """A tetrahedral mesh was repaired (orientation, unused vertices) or cells were dropped."""


@dataclass(frozen=True)
class TetReport:
    """Summary of a :class:`TetMesh` (all checks passed when one exists)."""

    n_vertices: int
    n_tets: int
    n_faces: int
    n_boundary_faces: int
    repaired_inverted: int  # tets whose orientation was repaired
    volume: float  # mm^3, sum of tet volumes
    boundary_volume: float  # mm^3, divergence theorem on the boundary faces (equals volume)
    nonmanifold_boundary_edges: int  # boundary edges used by 4, 6, ... faces (tets touching along an edge)


# ------------------------------------------------------------------------------------------
# array helpers that work on numpy arrays and torch tensors alike (differentiable in torch)
# ------------------------------------------------------------------------------------------
def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def tet_volumes(vertices, tets):
    """Signed volumes (T,) in mm^3 of tets (T, 4) over vertices (N, 3); numpy or torch."""
    p = vertices[tets]  # (T, 4, 3)
    e1, e2, e3 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], p[:, 3] - p[:, 0]
    if _is_torch(p):
        import torch

        return (e1 * torch.linalg.cross(e2, e3)).sum(-1) / 6.0
    return np.einsum("ij,ij->i", e1, np.cross(e2, e3)) / 6.0


def constant_jumps(densities, face_tets):
    """Per-face density jumps (F, B) = ρ[a] − ρ[b] (ρ = 0 for b = −1).

    densities : (T, B) per tet (numpy or torch; differentiable in torch).
    face_tets : (F, 2) int, tet behind (a) and in front (b, −1 = outside) of every face.
    """
    ft = face_tets if not _is_torch(densities) else _as_index(face_tets, densities)
    a, b = ft[:, 0], ft[:, 1]
    rho_b = densities[b.clip(min=0) if _is_torch(b) else np.maximum(b, 0)]
    inside = (b >= 0)[:, None]
    rho_b = rho_b * (inside.to(densities.dtype) if _is_torch(densities) else inside)
    return densities[a] - rho_b


def _as_index(idx, like):
    import torch

    return torch.as_tensor(np.array(idx) if not isinstance(idx, torch.Tensor) else idx, dtype=torch.long,
                           device=like.device)


def affine_coefficients(vertices, tets, values, x_ref):
    """Per-tet affine fields ``ρ(x) = c_T + g_T · (x − x_ref)`` through per-vertex values.

    vertices : (N, 3) mm; tets : (T, 4) int; values : (N, B) per-vertex densities;
    x_ref : (3,) reference point (mm). numpy or torch (differentiable in vertices,
    values and x_ref).

    Returns (c (T, B), g (T, B, 3) per mm). Solved per tet in coordinates relative to
    its first vertex (well conditioned for tets far from the origin).
    """
    if _is_torch(vertices) or _is_torch(values):
        import torch

        like = vertices if _is_torch(vertices) else values
        vertices = torch.as_tensor(vertices, dtype=like.dtype, device=like.device)
        values = torch.as_tensor(values, dtype=like.dtype, device=like.device)
        t = _as_index(tets, like)
        p = vertices[t]  # (T, 4, 3)
        f = values[t]  # (T, 4, B)
        E = p[:, 1:] - p[:, :1]  # (T, 3, 3) rows = edges
        df = f[:, 1:] - f[:, :1]  # (T, 3, B)
        g = torch.linalg.solve(E, df)  # (T, 3, B)
        xr = torch.as_tensor(x_ref, dtype=p.dtype, device=p.device) if not _is_torch(x_ref) else x_ref
        c = f[:, 0] + ((xr - p[:, 0])[:, :, None] * g).sum(1)
        return c, g.transpose(1, 2)
    p = vertices[tets]
    f = values[tets]
    E = p[:, 1:] - p[:, :1]
    df = f[:, 1:] - f[:, :1]
    g = np.linalg.solve(E, df)
    c = f[:, 0] + np.einsum("ti,tib->tb", np.asarray(x_ref, np.float64) - p[:, 0], g)
    return c, np.swapaxes(g, 1, 2)


def linear_jumps(vertices, tets, values, face_tets, x_ref):
    """Per-face jumps (F, B, 4) of a per-vertex (P1) density: ``[..., 0]`` = c_a − c_b (the
    jump of the two tets' affine fields at ``x_ref``), ``[..., 1:]`` = g_a − g_b (per mm).
    numpy or torch (differentiable). See :func:`affine_coefficients`."""
    c, g = affine_coefficients(vertices, tets, values, x_ref)
    if _is_torch(c):
        import torch

        cg = torch.cat([c[:, :, None], g], dim=2)  # (T, B, 4)
        return constant_jumps(cg.reshape(len(cg), -1), face_tets).reshape(-1, cg.shape[1], 4)
    cg = np.concatenate([c[:, :, None], g], axis=2)
    return constant_jumps(cg.reshape(len(cg), -1), face_tets).reshape(-1, cg.shape[1], 4)


def _parity(f: np.ndarray) -> np.ndarray:
    """Parity (0/1) of each oriented triangle (n, 3) relative to its sorted vertex order."""
    return ((f[:, 0] > f[:, 1]).astype(np.int8) + (f[:, 0] > f[:, 2]) + (f[:, 1] > f[:, 2])) % 2


def _row_keys(a: np.ndarray, n: int) -> np.ndarray:
    """Integer key per row of a sorted (m, k) index array (unique per row content)."""
    a = a.astype(np.int64)
    k = a.shape[1]
    if n ** k < 2**62:
        key = np.zeros(len(a), dtype=np.int64)
        for j in range(k):
            key = key * n + a[:, j]
        return key
    _, inv = np.unique(a, axis=0, return_inverse=True)
    return inv.reshape(-1).astype(np.int64)


# ------------------------------------------------------------------------------------------
# the mesh
# ------------------------------------------------------------------------------------------
class TetMesh:
    """A conforming tetrahedral mesh in mm with per-tet or per-vertex basis densities.

    Parameters
    ----------
    vertices : (N, 3) float, mm (stored float64, read-only).
    tets : (T, 4) int vertex indices (stored int64, positively oriented after repair).
    densities : None, (T, B) per-tet constant, or (N, B) per-vertex linear relative
        densities (fractions of each basis material's nominal density, >= 0). ``None``:
        density 1 of ``basis[0]`` and 0 of the others in every tet (a homogeneous object,
        the same as its boundary surface with material ``basis[0]``). A 1-D array is
        taken as B = 1.
    basis : material names (see :mod:`taichi_xray.physics.materials`), one per column.
    name : used in messages.
    kind : "auto" (from the shape of ``densities``; ambiguous when T == N), "constant"
        or "linear".
    repair : swap two vertices of inverted tets (with a warning) instead of raising.
    drop_unused : drop vertices no tet uses (with a warning) instead of raising.

    Attributes
    ----------
    faces : (F, 3) int64, every triangle once, normal from ``face_tets[:, 0]`` to
        ``face_tets[:, 1]``. face_tets : (F, 2) int64 (a, b), b = −1 on the boundary.
    kind : "constant" or "linear". report : :class:`TetReport`.
    """

    def __init__(self, vertices, tets, densities=None, basis=DEFAULT_BASIS, name: str | None = None, *,
                 kind: str = "auto", repair: bool = True, drop_unused: bool = False):
        label = f"tet mesh {name!r}" if name else "tet mesh"
        self.name = name
        V = np.asarray(vertices)
        X = np.asarray(tets)
        if V.ndim != 2 or V.shape[1] != 3:
            raise ValueError(f"{label}: vertices must have shape (N, 3), got {V.shape}")
        if not np.issubdtype(V.dtype, np.number) or np.issubdtype(V.dtype, np.complexfloating):
            raise TypeError(f"{label}: vertices must be real numbers, got dtype {V.dtype}")
        if X.ndim != 2 or X.shape[1] != 4:
            raise ValueError(f"{label}: tets must have shape (T, 4), got {X.shape}")
        if len(X) == 0:
            raise ValueError(f"{label}: has no tetrahedra")
        if not np.issubdtype(X.dtype, np.integer):
            if np.issubdtype(X.dtype, np.floating) and np.all(np.isfinite(X)) and np.all(X == np.round(X)):
                X = X.astype(np.int64)
            else:
                raise TypeError(f"{label}: tets must be integer indices, got dtype {X.dtype}")
        V = np.array(V, dtype=np.float64, order="C", copy=True)
        X = np.array(X, dtype=np.int64, order="C", copy=True)
        bad = ~np.isfinite(V).all(axis=1)
        if bad.any():
            raise ValueError(f"{label}: {int(bad.sum())} vertices contain NaN or inf (first at index "
                             f"{int(np.argmax(bad))})")
        if X.min() < 0 or X.max() >= len(V):
            raise ValueError(f"{label}: tet indices must lie in [0, {len(V) - 1}], got range [{X.min()}, {X.max()}]")
        s = np.sort(X, axis=1)
        rep = (s[:, 1:] == s[:, :-1]).any(axis=1)
        if rep.any():
            raise ValueError(f"{label}: {int(rep.sum())} tets use a vertex twice (first: tet {int(np.argmax(rep))} = "
                             f"{X[np.argmax(rep)].tolist()})")
        if isinstance(basis, str):
            basis = (basis,)
        self.basis = tuple(str(b) for b in basis)
        if not self.basis:
            raise ValueError(f"{label}: basis must name at least one material")
        D, self.kind = self._densities(densities, len(V), len(X), kind, label)

        used = np.bincount(X.reshape(-1), minlength=len(V)) > 0
        if not used.all():
            n_un = int((~used).sum())
            if not drop_unused:
                raise ValueError(f"{label}: {n_un} vertices are used by no tet (first at index "
                                 f"{int(np.argmin(used))}); pass drop_unused=True to drop them")
            warnings.warn(f"{label}: dropped {n_un} vertices used by no tet", TetMeshWarning, stacklevel=2)
            remap = np.cumsum(used) - 1
            X = remap[X]
            V = V[used]
            if self.kind == "linear":
                D = D[used]
        vol = tet_volumes(V, X)
        edges = V[X[:, [1, 2, 3, 2, 3, 3]]] - V[X[:, [0, 0, 0, 1, 1, 2]]]
        lmax = np.sqrt((edges**2).sum(-1).max(axis=1))
        diag = float(np.linalg.norm(np.ptp(V, axis=0)))
        degen = (np.abs(vol) <= _DEGENERATE_EDGE * lmax**3) | (np.abs(vol) <= _DEGENERATE_BOX * diag**3)
        if degen.any():
            i = int(np.argmax(degen))
            raise ValueError(f"{label}: {int(degen.sum())} degenerate (flat) tets, volume ~ 0 relative to their "
                             f"edges (first: tet {i}, volume {vol[i]:.3g} mm^3, longest edge {lmax[i]:.3g} mm)")
        inv = vol < 0
        if inv.any():
            if not repair:
                raise ValueError(f"{label}: {int(inv.sum())} of {len(X)} tets are inverted (negative signed volume; "
                                 f"first: tet {int(np.argmax(inv))}); pass repair=True to reorder them")
            X[inv] = X[inv][:, [0, 1, 3, 2]]
            vol = np.abs(vol)
            warnings.warn(f"{label}: {int(inv.sum())} of {len(X)} tets were inverted (negative signed volume); "
                          "swapped two vertices of each", TetMeshWarning, stacklevel=2)
        V.setflags(write=False)
        X.setflags(write=False)
        D.setflags(write=False)
        self.vertices, self.tets, self.densities = V, X, D
        self._volumes = vol
        self._volumes.setflags(write=False)
        self.build_info: dict | None = None  # set by tetbuild.tetrahedralize
        self.faces, self.face_tets, info = _extract_faces(V, X, label)
        self.faces.setflags(write=False)
        self.face_tets.setflags(write=False)
        self.report = TetReport(n_vertices=len(V), n_tets=len(X), n_faces=len(self.faces),
                                n_boundary_faces=int((self.face_tets[:, 1] < 0).sum()),
                                repaired_inverted=int(inv.sum()), volume=float(vol.sum()), **info)

    # ------------------------------------------------------------------ construction helpers
    def _densities(self, densities, N, T, kind, label):
        B = len(self.basis)
        if kind not in ("auto", "constant", "linear"):
            raise ValueError(f"{label}: kind must be 'auto', 'constant' or 'linear', got {kind!r}")
        if densities is None:
            if kind == "linear":
                D = np.zeros((N, B))
                D[:, 0] = 1.0
                return D, "linear"
            D = np.zeros((T, B))
            D[:, 0] = 1.0
            return D, "constant"
        D = np.array(densities, dtype=np.float64, copy=True)
        if D.ndim == 1:
            D = D[:, None]
        if D.ndim != 2 or D.shape[1] != B:
            raise ValueError(f"{label}: densities must have shape (T={T}, B={B}) or (N={N}, B={B}) for basis "
                             f"{self.basis}, got {D.shape}")
        if kind == "auto":
            if T == N and D.shape[0] == T:
                raise ValueError(f"{label}: densities of shape {D.shape} are ambiguous (as many tets as vertices); "
                                 "pass kind='constant' or kind='linear'")
            kind = "constant" if D.shape[0] == T else "linear" if D.shape[0] == N else "?"
        want = T if kind == "constant" else N
        if D.shape[0] != want:
            what = "tets" if kind == "constant" else "vertices"
            raise ValueError(f"{label}: {kind} densities need {want} rows ({what}), got shape {D.shape}")
        if not np.isfinite(D).all():
            raise ValueError(f"{label}: densities contain NaN or inf")
        if (D < 0).any():
            raise ValueError(f"{label}: densities must be >= 0 (relative densities), min is {D.min():.4g}")
        return D, kind

    def with_densities(self, densities, basis=None, kind: str = "auto") -> "TetMesh":
        """The same mesh with other densities: an array (T, B) / (N, B), or a function
        ``f(points (n, 3) mm) -> (n, B)`` evaluated at tet centroids (``kind="constant"``,
        the default for a function) or at vertices (``kind="linear"``)."""
        basis = self.basis if basis is None else basis
        if callable(densities):
            kind = "constant" if kind == "auto" else kind
            pts = self.centroids() if kind == "constant" else self.vertices
            densities = np.asarray(densities(pts.copy()), dtype=np.float64)
            if densities.ndim == 1:
                densities = densities[:, None]
            if densities.shape[0] != len(pts):
                raise ValueError(f"density function returned {densities.shape[0]} rows for {len(pts)} points")
        # same geometry and topology (already checked): only the densities are new
        out = copy.copy(self)
        out.basis = (basis,) if isinstance(basis, str) else tuple(str(b) for b in basis)
        if not out.basis:
            raise ValueError("basis must name at least one material")
        label = f"tet mesh {self.name!r}" if self.name else "tet mesh"
        D, out.kind = out._densities(densities, len(self.vertices), len(self.tets), kind, label)
        D.setflags(write=False)
        out.densities = D
        return out

    def to_constant(self) -> "TetMesh":
        """Per-tet constant densities: the exact mean of a linear field over each tet (the
        mean of its 4 vertex values); itself when already constant."""
        if self.kind == "constant":
            return self
        return self.with_densities(self.densities[self.tets].mean(axis=1), kind="constant")

    # ------------------------------------------------------------------ geometry
    def __repr__(self) -> str:
        n = f"{self.name!r}, " if self.name else ""
        return (f"TetMesh({n}{len(self.vertices)} vertices, {len(self.tets)} tets, {len(self.faces)} faces, "
                f"{self.kind} densities of {'/'.join(self.basis)})")

    @property
    def n_tets(self) -> int:
        return len(self.tets)

    @property
    def n_faces(self) -> int:
        return len(self.faces)

    @property
    def boundary_mask(self) -> np.ndarray:
        """(F,) bool, True for faces on the boundary (``face_tets[:, 1] == -1``)."""
        return self.face_tets[:, 1] < 0

    def volumes(self) -> np.ndarray:
        """(T,) tet volumes, mm^3 (positive)."""
        return self._volumes.copy()

    def volume(self) -> float:
        return float(self._volumes.sum())

    def centroids(self) -> np.ndarray:
        """(T, 3) tet centroids, mm."""
        return self.vertices[self.tets].mean(axis=1)

    @property
    def reference_point(self) -> np.ndarray:
        """(3,) volume-weighted centroid (mm): the default ``x_ref`` of :meth:`linear_jumps`."""
        return (self.centroids() * self._volumes[:, None]).sum(0) / self._volumes.sum()

    def mass(self) -> np.ndarray:
        """(B,) mass of each basis material in g (relative density x nominal density x volume)."""
        from ..physics.materials import get_material

        rho = np.array([get_material(b).density for b in self.basis])  # g/cm^3
        if self.kind == "constant":
            m = (self.densities * self._volumes[:, None]).sum(0)
        else:  # mean of a linear field over a tet = mean of its vertex values
            m = (self.densities[self.tets].mean(axis=1) * self._volumes[:, None]).sum(0)
        return m * rho / 1000.0

    def boundary(self, compact: bool = True) -> Mesh:
        """The boundary faces as a closed, outward triangle :class:`Mesh` (watertight for a
        manifold boundary). ``compact`` drops the interior vertices (renumbering)."""
        F = self.faces[self.boundary_mask]
        V = self.vertices
        if compact:
            used = np.unique(F)
            remap = np.full(len(V), -1, dtype=np.int64)
            remap[used] = np.arange(len(used))
            V, F = V[used], remap[F]
        return Mesh(V, F, self.name)

    # ------------------------------------------------------------------ rendering weights
    def face_jumps(self, tol: float = 0.0):
        """Constant densities: per-face jumps (F, B) = density of the tet behind minus the tet
        in front (outside = 0), float64, and ``active`` (F,) bool: faces with some
        ``|jump| > tol`` (the others add nothing and can be skipped by the renderer)."""
        if self.kind != "constant":
            raise ValueError(f"{self!r} has per-vertex (linear) densities: use linear_jumps(), or to_constant() "
                             "for the per-tet mean")
        J = constant_jumps(self.densities, self.face_tets)
        return J, (np.abs(J) > tol).any(axis=1)

    def linear_jumps(self, x_ref=None, tol: float = 0.0):
        """Per-face jumps of the piecewise affine density (any kind; a constant one has g = 0).

        Returns (jumps (F, B, 4) float64, x_ref (3,), active (F,) bool): ``jumps[..., 0]`` =
        c_a − c_b, the jump of the affine fields of the tets behind and in front at
        ``x_ref`` (relative density), ``jumps[..., 1:]`` = g_a − g_b (per mm). Along a ray
        ``x = x0 + τ d`` (|d| = 1) a face contributes
        ``sign · [τ (c + Δg·(x0 − x_ref)) + τ²/2 (Δg·d)]``. ``x_ref`` defaults to
        :attr:`reference_point`; pick a point near the object to keep float32 sums accurate.
        """
        x_ref = self.reference_point if x_ref is None else np.asarray(x_ref, np.float64).reshape(3)
        if self.kind == "linear":
            J = linear_jumps(self.vertices, self.tets, self.densities, self.face_tets, x_ref)
        else:
            J = np.zeros((self.n_faces, len(self.basis), 4))
            J[..., 0] = constant_jumps(self.densities, self.face_tets)
        return J, x_ref, (np.abs(J) > tol).reshape(len(J), -1).any(axis=1)

    def affine_fields(self, x_ref=None):
        """Per-tet ``ρ(x) = c + g·(x − x_ref)``: (c (T, B), g (T, B, 3), x_ref (3,))."""
        x_ref = self.reference_point if x_ref is None else np.asarray(x_ref, np.float64).reshape(3)
        if self.kind == "linear":
            c, g = affine_coefficients(self.vertices, self.tets, self.densities, x_ref)
        else:
            c, g = self.densities.copy(), np.zeros((self.n_tets, len(self.basis), 3))
        return c, g, x_ref

    def face_channels(self, channels=None, parent_channel: int | None = None, tol: float = 0.0):
        """Per-face channel weights for the rasterizer (constant densities).

        channels : (B,) channel index of each basis material (default 0 .. B−1).
        parent_channel : the channel of the material the mesh is nested in (its parent
            object), or None (air). Boundary faces then also carry (parent_channel, −1),
            so the parent's channel loses the path inside this mesh, as for surface meshes.
        Returns (face_ch (F, J) int32, −1 = none; face_w (F, J) float64; active (F,) bool),
        J = B (+1 with a parent). Faces that are not active carry only −1.
        """
        J, active = self.face_jumps(tol)
        B = len(self.basis)
        ch = np.arange(B) if channels is None else np.asarray(channels, dtype=np.int64).reshape(-1)
        if len(ch) != B:
            raise ValueError(f"channels must give one channel per basis material ({B}), got {len(ch)}")
        face_ch = np.where(np.abs(J) > tol, ch[None, :], -1).astype(np.int32)
        face_w = np.where(face_ch >= 0, J, 0.0)
        if parent_channel is not None:
            bnd = self.boundary_mask
            face_ch = np.concatenate([face_ch, np.where(bnd, int(parent_channel), -1)[:, None].astype(np.int32)], 1)
            face_w = np.concatenate([face_w, np.where(bnd, -1.0, 0.0)[:, None]], 1)
            active = active | bnd
        return face_ch, face_w, active

    # ------------------------------------------------------------------ building (see tetbuild)
    @classmethod
    def from_surface(cls, mesh, max_volume: float | None = None, quality: float | None = None,
                     method: str = "ftetwild", **options) -> "TetMesh":
        """Tetrahedralise a closed surface; see :func:`taichi_xray.objects.tetbuild.tetrahedralize`."""
        from .tetbuild import tetrahedralize

        return tetrahedralize(mesh, max_volume=max_volume, quality=quality, method=method, **options)

    def sample_ct(self, ct, kind: str = "linear", conversion="water_bone", **options) -> "TetMesh":
        """The same mesh with densities sampled from a CT volume: at tet centroids
        (``kind="constant"``) or vertices (``kind="linear"``); the basis becomes the HU
        conversion's materials. See :func:`taichi_xray.objects.tetbuild.sample_ct`."""
        from ..physics.hu import get_hu_conversion
        from .tetbuild import sample_ct

        if kind not in ("constant", "linear"):
            raise ValueError(f"kind must be 'constant' or 'linear', got {kind!r}")
        conv = get_hu_conversion(conversion, **{k: options.pop(k) for k in list(options) if k != "outside"})
        pts = self.centroids() if kind == "constant" else self.vertices
        D = sample_ct(ct, pts, conversion=conv, **options)
        return self.with_densities(D, basis=conv.names, kind=kind)

    # ------------------------------------------------------------------ file I/O (meshio)
    @classmethod
    def load(cls, path, basis=None, name: str | None = None, kind: str = "auto") -> "TetMesh":
        """Read a tetrahedral mesh with meshio (VTU, VTK, MSH, INP, MEDIT, XDMF, ...).

        ``tetra`` cells are kept; ``tetra10`` keep their 4 corners (warning); other
        volume cells (hexahedra, wedges, pyramids) are dropped with a
        :class:`TetMeshWarning`; lower-dimensional cells (vertices, lines, triangles,
        quads: boundary tags) are ignored. Unused vertices are dropped with a warning.
        Densities are read from cell data (per tet) or point data (per vertex) named
        ``density_<material>`` (what :meth:`save` writes); ``basis`` selects and orders
        them (default: all such fields, in file order). Without such fields the mesh is
        homogeneous (``basis`` default ``("water", "cortical_bone")``, density 1 of the first).
        """
        import meshio

        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"tet mesh file not found: {path}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                m = meshio.read(path)
        except Exception as exc:
            raise ValueError(f"could not read tet mesh file {path}: {exc}") from exc
        volume_types = ("hexahedron", "wedge", "pyramid")
        keep, dropped = [], []
        for i, block in enumerate(m.cells):
            if block.type in ("tetra", "tetra10"):
                keep.append(i)
            elif block.type.startswith(volume_types):
                dropped.append(f"{len(block.data)} {block.type}")
        if not keep:
            raise ValueError(f"{path}: no tetrahedra (cell types found: {sorted({b.type for b in m.cells})})")
        if dropped:
            warnings.warn(f"{path}: kept the tetrahedra and dropped other volume cells ({', '.join(dropped)})",
                          TetMeshWarning, stacklevel=2)
        if any(m.cells[i].type == "tetra10" for i in keep):
            warnings.warn(f"{path}: quadratic tetra10 cells kept as linear tets (their 4 corners)", TetMeshWarning,
                          stacklevel=2)
        X = np.concatenate([np.asarray(m.cells[i].data)[:, :4] for i in keep]).astype(np.int64)
        V = np.asarray(m.points, dtype=np.float64)
        if V.ndim != 2 or V.shape[1] < 3:
            raise ValueError(f"{path}: points must be 3-D, got shape {V.shape}")
        cell_fields = {k[len("density_"):]: np.concatenate([np.asarray(v[i]).reshape(len(m.cells[i].data), -1)[:, 0]
                                                             for i in keep])
                       for k, v in m.cell_data.items() if k.startswith("density_")}
        point_fields = {k[len("density_"):]: np.asarray(v).reshape(len(V), -1)[:, 0]
                        for k, v in m.point_data.items() if k.startswith("density_")}
        fields, kind_f = (cell_fields, "constant") if cell_fields else (point_fields, "linear")
        if cell_fields and point_fields:
            raise ValueError(f"{path}: densities given both per cell and per point; keep one")
        D = None
        if fields:
            names = list(fields) if basis is None else [basis] if isinstance(basis, str) else list(basis)
            missing = [b for b in names if b not in fields]
            if missing:
                raise KeyError(f"{path}: no density field for {missing}; found {sorted(fields)}")
            D = np.stack([fields[b] for b in names], axis=1)
            basis, kind = names, kind_f
        elif basis is None:
            basis = DEFAULT_BASIS
        return cls(V[:, :3], X, D, basis, name or os.path.splitext(os.path.basename(path))[0], kind=kind,
                   drop_unused=True)

    def save(self, path, overwrite: bool = False, **options) -> None:
        """Write with meshio (format from the extension; VTU/VTK/XDMF keep the densities as
        ``density_<material>`` cell or point data). Never overwrites unless asked."""
        import meshio

        path = os.fspath(path)
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        data = {f"density_{b}": self.densities[:, i].copy() for i, b in enumerate(self.basis)}
        kw = dict(cell_data={k: [v] for k, v in data.items()}) if self.kind == "constant" else dict(point_data=data)
        try:
            meshio.write(path, meshio.Mesh(self.vertices, [("tetra", self.tets)], **kw), **options)
        except (meshio.ReadError, meshio.WriteError) as exc:
            raise ValueError(f"cannot write {path}: {exc}") from exc


# ------------------------------------------------------------------------------------------
# face extraction and the conformity checks
# ------------------------------------------------------------------------------------------
def _extract_faces(V: np.ndarray, X: np.ndarray, label: str):
    """Faces (F, 3) oriented from tet a to tet b, face_tets (F, 2) and boundary statistics."""
    T, N = len(X), len(V)
    allf = X[:, LOCAL_FACES].reshape(-1, 3)  # outward faces of every tet
    owner = np.repeat(np.arange(T), 4)
    key = _row_keys(np.sort(allf, axis=1), N)
    order = np.argsort(key, kind="stable")
    ks = key[order]
    start = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    count = np.diff(np.r_[start, len(ks)])
    if (count > 2).any():
        g = int(np.argmax(count > 2))
        tri = allf[order[start[g]]]
        raise ValueError(f"{label}: not conforming: {int((count > 2).sum())} triangles are shared by more than two "
                         f"tets (first: vertices {sorted(tri.tolist())}, tets "
                         f"{sorted(owner[order[start[g]:start[g] + count[g]]].tolist())}); duplicate or overlapping "
                         "tets")
    first = order[start]
    pair = count == 2
    second = np.full(len(start), -1, dtype=np.int64)
    second[pair] = order[start[pair] + 1]
    par = _parity(allf)
    same = pair & (par[first] == par[np.maximum(second, 0)])
    if same.any():
        g = int(np.argmax(same))
        raise ValueError(f"{label}: not conforming: {int(same.sum())} interior triangles have both their tets on the "
                         f"same side (first: tets {owner[first[g]]} and {owner[second[g]]}); the mesh is folded or "
                         "tets overlap")
    faces = allf[first]
    face_tets = np.stack([owner[first], np.where(pair, owner[np.maximum(second, 0)], -1)], axis=1)
    bf, bown = faces[~pair], owner[first[~pair]]
    e = np.sort(bf[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    _, ecount = np.unique(_row_keys(e, N), return_counts=True)
    # Every tet's boundary is a closed surface, so the boundary faces always close up
    # combinatorially; a face only partly covered by its neighbours (hanging vertex) or an
    # interface triangulated differently on its two sides shows geometrically: there is a
    # tet right outside that "boundary" face.
    covered = _covered_boundary_faces(V, X, bf, bown)
    if covered.any():
        i = int(np.argmax(covered))
        raise ValueError(f"{label}: not conforming: {int(covered.sum())} boundary faces have a tet right outside them "
                         f"(first: face {sorted(bf[i].tolist())} of tet {int(bown[i])}): a tet face is only partly "
                         "covered by its neighbours (hanging vertex), an interface is triangulated differently on "
                         "its two sides, or parts of the mesh overlap or touch")
    p = V[bf] - V[bf].mean(axis=(0, 1))
    total = float(np.einsum("ij,ij->i", p[:, 0], np.cross(p[:, 1], p[:, 2])).sum() / 6.0)
    info = dict(boundary_volume=total, nonmanifold_boundary_edges=int((ecount > 2).sum()))
    return faces.astype(np.int64), face_tets.astype(np.int64), info


def _covered_boundary_faces(V: np.ndarray, X: np.ndarray, bf: np.ndarray, bown: np.ndarray) -> np.ndarray:
    """(Fb,) bool: boundary faces whose outer side lies in another tet.

    Probe: the face's centroid moved outward by 1e-4 of its size; candidate tets within
    the largest centroid-to-vertex distance of it (k-d tree), then barycentric
    coordinates (inclusive, so a probe on a shared face of two neighbours counts)."""
    from scipy.spatial import cKDTree

    p = V[bf]
    n = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    area2 = np.linalg.norm(n, axis=1)
    probe = p.mean(axis=1) + (1e-4 * np.sqrt(area2) / np.maximum(area2, 1e-300))[:, None] * n
    q = V[X]
    cen = q.mean(axis=1)
    R = float(np.sqrt(((q - cen[:, None]) ** 2).sum(-1)).max())
    Einv = np.linalg.inv(np.swapaxes(q[:, 1:] - q[:, :1], 1, 2))  # (T, 3, 3): barycentric 1..3 = Einv (x - v0)
    tree = cKDTree(cen)
    out = np.zeros(len(bf), dtype=bool)
    for lo in range(0, len(bf), 20000):
        hits = tree.query_ball_point(probe[lo:lo + 20000], R * (1 + 1e-9))
        cnt = np.fromiter((len(h) for h in hits), dtype=np.int64, count=len(hits))
        if cnt.sum() == 0:
            continue
        fi = np.repeat(np.arange(lo, lo + len(hits)), cnt)
        ti = np.fromiter((t for h in hits for t in h), dtype=np.int64, count=int(cnt.sum()))
        keep = ti != bown[fi]
        fi, ti = fi[keep], ti[keep]
        lam = np.einsum("kij,kj->ki", Einv[ti], probe[fi] - q[ti, 0])
        inside = (lam >= -1e-9).all(axis=1) & (lam.sum(axis=1) <= 1 + 1e-9)
        out[fi[inside]] = True
    return out
