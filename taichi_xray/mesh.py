"""Triangle meshes: construction, input checks, file I/O and rigid transforms.

A :class:`Mesh` holds ``vertices`` (N, 3) float64 in mm and ``faces`` (M, 3)
int64, counter-clockwise seen from outside (outward normals by the right-hand
rule). Construction rejects NaN/inf vertices and out-of-range indices; the
topology checks (:meth:`Mesh.check`) find degenerate faces, open edges and
inconsistent or inward orientation, and :meth:`Mesh.oriented` repairs the
orientation of closed meshes.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["Mesh", "MeshReport", "MeshWarning"]


class MeshWarning(UserWarning):
    """A mesh was repaired or has a defect that the rasterizer works around."""


# a closed mesh thinner than this fraction of its extent encloses no volume (float32, which the
# rasterizer uses, resolves about 6e-8 of a coordinate)
FLAT_RELATIVE = 1e-6


@dataclass(frozen=True)
class MeshReport:
    """Result of :meth:`Mesh.check`."""

    n_vertices: int
    n_faces: int
    degenerate_faces: int
    boundary_edges: int  # edges used by one face
    nonmanifold_edges: int  # edges used by three or more faces
    misoriented_edges: int  # interior edges whose two faces disagree on orientation
    components: int
    volume: float  # signed, mm^3 (meaningful for closed meshes), about the mesh's own centroid
    area: float = float("nan")  # surface area, mm^2
    extent: float = float("nan")  # largest side of the bounding box, mm

    @property
    def watertight(self) -> bool:
        return self.boundary_edges == 0 and self.nonmanifold_edges == 0

    @property
    def consistent(self) -> bool:
        return self.watertight and self.misoriented_edges == 0

    @property
    def thickness(self) -> float:
        """Mean thickness 2 |volume| / area (mm): a slab's thickness, a cylinder's radius."""
        return 2.0 * abs(self.volume) / self.area if self.area > 0 else 0.0

    @property
    def flat(self) -> bool:
        """Closed but enclosing no volume: thinner than FLAT_RELATIVE x its extent (e.g. all
        vertices in one plane). It has no inside, so neither an orientation nor a path length."""
        return self.consistent and self.thickness <= FLAT_RELATIVE * self.extent

    @property
    def outward(self) -> bool:
        return self.consistent and self.volume > 0 and not self.flat

    def problems(self) -> list[str]:
        out = []
        if self.degenerate_faces:
            out.append(f"{self.degenerate_faces} degenerate (zero-area) faces")
        if self.boundary_edges:
            out.append(f"not watertight: {self.boundary_edges} edges belong to a single face")
        if self.nonmanifold_edges:
            out.append(f"not manifold: {self.nonmanifold_edges} edges belong to 3 or more faces")
        if self.misoriented_edges:
            out.append(f"inconsistent orientation on {self.misoriented_edges} edges")
        if self.flat:
            out.append(f"encloses no volume: flat or collapsed (mean thickness {self.thickness:.3g} mm across "
                       f"{self.extent:.3g} mm), so it has no inside and projects to zero path length")
        elif self.consistent and self.volume <= 0:
            out.append("faces point inward (negative volume)")
        return out


def _edges(faces: np.ndarray) -> np.ndarray:
    """Directed edges (3M, 2) of the faces, in face order."""
    return faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)


class Mesh:
    """A triangle mesh in mm.

    Parameters
    ----------
    vertices : array-like (N, 3), float
        Vertex positions in mm; stored as float64.
    faces : array-like (M, 3), int
        Vertex indices, counter-clockwise seen from outside.
    name : str, optional
        Used in messages.
    """

    def __init__(self, vertices, faces, name: str | None = None):
        label = f"mesh {name!r}" if name else "mesh"
        try:
            V = np.asarray(vertices)
            F = np.asarray(faces)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{label}: vertices and faces must be rectangular arrays ({exc})") from None
        if V.ndim != 2 or V.shape[1] != 3:
            raise ValueError(f"{label}: vertices must have shape (N, 3), got {V.shape}")
        if F.ndim != 2 or F.shape[1] != 3:
            raise ValueError(f"{label}: faces must have shape (M, 3), got {F.shape}")
        if not np.issubdtype(V.dtype, np.number) or np.issubdtype(V.dtype, np.complexfloating):
            raise TypeError(f"{label}: vertices must be real numbers, got dtype {V.dtype}")
        if F.size and not np.issubdtype(F.dtype, np.integer):
            if np.issubdtype(F.dtype, np.floating) and np.all(np.isfinite(F)) and np.all(F == np.round(F)):
                F = F.astype(np.int64)
            else:
                raise TypeError(f"{label}: faces must be integer indices, got dtype {F.dtype}")
        # own copies: the caller's arrays stay writable and cannot change the mesh
        V = np.array(V, dtype=np.float64, order="C", copy=True)
        F = np.array(F, dtype=np.int64, order="C", copy=True)
        bad = ~np.isfinite(V).all(axis=1)
        if bad.any():
            raise ValueError(f"{label}: {int(bad.sum())} vertices contain NaN or inf (first at index {int(np.argmax(bad))})")
        if len(F) == 0:
            raise ValueError(f"{label}: has no faces")
        if F.min() < 0 or F.max() >= len(V):
            raise ValueError(f"{label}: face indices must lie in [0, {len(V) - 1}], got range [{F.min()}, {F.max()}]")
        V.setflags(write=False)
        F.setflags(write=False)
        self.vertices = V
        self.faces = F
        self.name = name
        self._report: MeshReport | None = None

    # ------------------------------------------------------------- basics
    def __repr__(self) -> str:
        n = f"{self.name!r}, " if self.name else ""
        return f"Mesh({n}{len(self.vertices)} vertices, {len(self.faces)} faces)"

    @property
    def n_faces(self) -> int:
        return len(self.faces)

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.vertices.min(axis=0), self.vertices.max(axis=0)

    def face_normals(self, normalize: bool = True) -> np.ndarray:
        v = self.vertices[self.faces]
        n = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
        if normalize:
            n = n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-300)
        return n

    def area(self) -> float:
        return float(0.5 * np.linalg.norm(self.face_normals(False), axis=1).sum())

    def volume(self) -> float:
        """Signed volume (mm^3) by the divergence theorem; positive for outward closed meshes."""
        v = self.vertices[self.faces]
        c = v.mean(axis=(0, 1))  # reduce rounding for meshes far from the origin
        v = v - c
        return float(np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6.0)

    # ------------------------------------------------------------- checks
    def check(self) -> MeshReport:
        """Topology and orientation report (cached)."""
        if self._report is None:
            F = self.faces
            n = self.face_normals(False)
            area2 = np.linalg.norm(n, axis=1)
            scale = max(float(np.ptp(self.vertices, axis=0).max()), 1e-300)
            degenerate = int((area2 <= 1e-12 * scale * scale).sum())
            e = _edges(F)
            und = np.sort(e, axis=1)
            key = und[:, 0] * (len(self.vertices) + 1) + und[:, 1]
            uniq, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
            boundary = int((counts == 1).sum())
            nonmanifold = int((counts > 2).sum())
            # orientation: on an interior edge the two faces traverse it in opposite directions
            forward = (e[:, 0] < e[:, 1]).astype(np.int64)
            fwd_count = np.bincount(inv, weights=forward, minlength=len(uniq))
            mis = int(((counts == 2) & (fwd_count != 1)).sum())
            comps = _component_count(F, len(self.vertices))
            self._report = MeshReport(
                n_vertices=len(self.vertices),
                n_faces=len(F),
                degenerate_faces=degenerate,
                boundary_edges=boundary,
                nonmanifold_edges=nonmanifold,
                misoriented_edges=mis,
                components=comps,
                volume=self.volume(),
                area=float(0.5 * area2.sum()),
                extent=scale if scale > 1e-300 else 0.0,
            )
        return self._report

    def oriented(self, warn: bool = True) -> "Mesh":
        """This mesh with consistent, outward faces (itself when already so).

        Orientation is propagated across shared edges within each
        edge-connected component, and each component keeps the orientation
        of the majority (by area) of its faces, so an inward-facing internal
        cavity (see :mod:`taichi_xray.ct.labels`) stays a cavity. If the total
        signed volume is then negative, all faces are flipped. Warns
        (:class:`MeshWarning`) whenever it changed anything. Open or
        non-manifold meshes are returned unchanged, and so are flat ones
        (closed but enclosing no volume, :attr:`MeshReport.flat`: no inside, so
        no orientation), with a warning that says so.
        """
        rep = self.check()
        if rep.outward or not rep.watertight:
            return self
        if rep.flat:
            if warn:
                warnings.warn(f"{self!r} {rep.problems()[-1]}; left as it is", MeshWarning, stacklevel=2)
            return self
        F = _orient_components(self.vertices, self.faces)
        out = Mesh(self.vertices, F, self.name)
        if warn:
            warnings.warn(
                f"{self!r}: faces were {'inconsistently oriented' if rep.misoriented_edges else 'pointing inward'}; "
                "reoriented them outward",
                MeshWarning,
                stacklevel=2,
            )
        return out

    # ----------------------------------------------------------- transforms
    def transformed(self, R=None, t=None, centre=None) -> "Mesh":
        """Rigidly moved copy: ``v' = R (v - centre) + centre + t``.

        ``R`` (3, 3) must be a rotation (``det = +1``); a reflection would
        turn the mesh inside out.
        """
        R = np.eye(3) if R is None else np.asarray(R, dtype=np.float64)
        t = np.zeros(3) if t is None else np.asarray(t, dtype=np.float64)
        c = np.zeros(3) if centre is None else np.asarray(centre, dtype=np.float64)
        if t.size != 3 or c.size != 3:
            raise ValueError(f"t and centre must be 3-vectors (mm), got shapes {t.shape} and {c.shape}")
        t, c = t.reshape(3), c.reshape(3)
        if not (np.isfinite(t).all() and np.isfinite(c).all()):
            raise ValueError("t and centre must be finite")
        if R.shape != (3, 3) or not np.allclose(R @ R.T, np.eye(3), atol=1e-6) or np.linalg.det(R) < 0:
            raise ValueError("R must be a 3x3 rotation matrix (orthogonal, det +1)")
        V = (self.vertices - c) @ R.T + c + t
        return Mesh(V, self.faces, self.name)

    def translated(self, t) -> "Mesh":
        return self.transformed(t=t)

    # --------------------------------------------------------------- file I/O
    @classmethod
    def load(cls, path, name: str | None = None, merge_vertices: bool = True) -> "Mesh":
        """Read any triangle mesh that meshio reads (STL, OBJ, PLY, OFF, VTK, VTU, ...).

        Exactly coincident vertices are merged (STL stores a triangle soup),
        keeping the file's vertex order (first occurrence), and unused
        vertices are dropped. Polygon cells are split into triangles (fan);
        other cells (lines, volume cells) are ignored.
        """
        import meshio

        path = os.fspath(path)
        if os.path.isdir(path):
            raise IsADirectoryError(f"{path} is a directory, not a mesh file")
        if not os.path.exists(path):
            raise FileNotFoundError(f"mesh file not found: {path}")
        try:
            with warnings.catch_warnings():  # meshio's STL format sniffing overflows on ASCII files
                warnings.simplefilter("ignore", RuntimeWarning)
                m = meshio.read(path)
        except Exception as exc:
            kind = _sniff_foreign(path)
            if kind is not None:
                fmt = os.path.splitext(path)[1].lstrip(".").upper() or "a mesh"
                raise ValueError(f"cannot read {path} as {fmt}: it is {kind}, not a mesh file") from None
            raise ValueError(f"could not read mesh file {path}: {exc}") from exc
        tris = []
        for block in m.cells:
            data = np.asarray(block.data)
            if block.type == "triangle":
                tris.append(data)
            elif block.type in ("quad", "polygon") or block.type.startswith("polygon"):
                for k in range(1, data.shape[1] - 1):  # fan triangulation
                    tris.append(data[:, [0, k, k + 1]])
        if not tris:
            raise ValueError(f"{path}: no triangle or polygon cells (found {[b.type for b in m.cells]})")
        F = np.concatenate(tris, axis=0).astype(np.int64)
        V = np.asarray(m.points, dtype=np.float64)
        if V.ndim != 2 or V.shape[1] < 3:
            raise ValueError(f"{path}: points must be 3-D, got shape {V.shape}")
        V = V[:, :3]
        if F.size and (F.min() < 0 or F.max() >= len(V)):
            raise ValueError(f"{path}: face indices out of range [0, {len(V) - 1}]")
        if merge_vertices and np.isfinite(V).all():
            _, first, inv = np.unique(V, axis=0, return_index=True, return_inverse=True)
            order = np.argsort(first)  # unique points in order of first occurrence
            rank = np.empty_like(order)
            rank[order] = np.arange(len(order))
            V = V[first[order]]
            F = rank[inv.reshape(-1)][F]
        used = np.unique(F)
        if len(used) != len(V):  # drop unused vertices
            remap = np.full(len(V), -1, dtype=np.int64)
            remap[used] = np.arange(len(used))
            V, F = V[used], remap[F]
        return cls(V, F, name or os.path.splitext(os.path.basename(path))[0])

    def save(self, path, overwrite: bool = False, **options) -> None:
        """Write the mesh with meshio (format from the extension); never overwrites unless asked.

        ``options`` go to :func:`meshio.write`, e.g. ``binary=True`` for STL
        (float32 coordinates; meshio writes ASCII STL by default).
        """
        import meshio

        path = os.fspath(path)
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        F = self.faces.astype(np.int32) if len(self.vertices) < 2**31 else self.faces  # PLY has no int64
        try:
            meshio.write(path, meshio.Mesh(self.vertices, [("triangle", F)]), **options)
        except (meshio.ReadError, meshio.WriteError) as exc:  # meshio raises ReadError for an unknown extension
            raise ValueError(f"cannot write {path}: {exc}") from exc


# ------------------------------------------------------------------ helpers
# file signatures of common non-mesh files, to name what a file that meshio cannot read really is
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"), (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"), (b"\x1f\x8b", "a gzip-compressed file"), (b"\x89HDF", "an HDF5 file"),
    (b"\x93NUMPY", "a NumPy .npy array"),
)


def _sniff_foreign(path) -> str | None:
    """What a file is when its first bytes are a known non-mesh signature (else None)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return None
    for sig, kind in _SIGNATURES:
        if head.startswith(sig):
            return kind
    if len(head) == 132 and head[128:132] == b"DICM":
        return "a DICOM file"
    if len(head) >= 4 and head[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c"):
        return "a NIfTI-1 image"
    return None


def _face_adjacency(F: np.ndarray):
    """Pairs of faces sharing an edge (only edges with exactly two faces)."""
    e = np.sort(_edges(F), axis=1)
    key = e[:, 0] * (int(F.max()) + 2) + e[:, 1]
    order = np.argsort(key, kind="stable")
    ks = key[order]
    same = ks[1:] == ks[:-1]
    a, b = order[:-1][same], order[1:][same]
    # exclude edges with >2 faces
    _, counts = np.unique(ks, return_counts=True)
    ok = np.repeat(counts == 2, counts)
    keep = ok[:-1][same]
    return a[keep] // 3, b[keep] // 3, a[keep] % 3, b[keep] % 3


def _component_count(F: np.ndarray, n_vertices: int) -> int:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    e = _edges(F)
    g = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n_vertices, n_vertices))
    n, labels = connected_components(g, directed=False)
    return int(len(np.unique(labels[np.unique(F)])))


def _orient_components(V: np.ndarray, F: np.ndarray) -> np.ndarray:
    """Consistent outward orientation by breadth-first propagation over shared edges."""
    from collections import deque

    F = F.copy()
    flipped = np.zeros(len(F), dtype=bool)
    fa, fb, ea, eb = _face_adjacency(F)
    nbrs: list[list[int]] = [[] for _ in range(len(F))]
    for a, b in zip(fa.tolist(), fb.tolist()):
        nbrs[a].append(b)
        nbrs[b].append(a)
    seen = np.zeros(len(F), dtype=bool)
    comps = []
    for start in range(len(F)):
        if seen[start]:
            continue
        comp = [start]
        seen[start] = True
        q = deque([start])
        while q:
            f = q.popleft()
            ef = {(F[f, k], F[f, (k + 1) % 3]) for k in range(3)}
            for g in nbrs[f]:
                if seen[g]:
                    continue
                eg = {(F[g, k], F[g, (k + 1) % 3]) for k in range(3)}
                if ef & eg:  # same directed edge: g is flipped relative to f
                    F[g] = F[g, ::-1]
                    flipped[g] = True
                seen[g] = True
                comp.append(g)
                q.append(g)
        comps.append(np.array(comp))
    v = V[F]
    area = np.linalg.norm(np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), axis=1)
    for comp in comps:  # keep the orientation of the majority (by area) of the input faces
        if area[comp][flipped[comp]].sum() > area[comp][~flipped[comp]].sum():
            F[comp] = F[comp][:, ::-1]
    v = V[F] - V[F].mean(axis=(0, 1))
    if np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() < 0:
        F = F[:, ::-1].copy()
    return F
