"""Mesh construction, topology checks, orientation repair, transforms and file I/O,
against independent references (analytic volumes/areas, a plain-python edge counter)."""
import os
import warnings
from collections import Counter

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from taichi_xray.mesh import Mesh, MeshReport, MeshWarning

from reference import box, icosphere, signed_volume


# ------------------------------------------------------------------ references
def edge_reference(F):
    """Plain-python edge statistics: (boundary, non-manifold, misoriented) edge counts."""
    directed = Counter()
    undirected = Counter()
    for f in F.tolist():
        for k in range(3):
            a, b = f[k], f[(k + 1) % 3]
            directed[(a, b)] += 1
            undirected[frozenset((a, b))] += 1
    boundary = sum(1 for n in undirected.values() if n == 1)
    nonmanifold = sum(1 for n in undirected.values() if n > 2)
    mis = 0
    for e, n in undirected.items():
        if n == 2:
            a, b = tuple(e)
            if directed[(a, b)] != 1:  # both faces run the edge the same way
                mis += 1
    return boundary, nonmanifold, mis


def canonical(F):
    """Faces rotated so the smallest index comes first (orientation kept)."""
    F = np.asarray(F)
    k = np.argmin(F, axis=1)
    idx = (k[:, None] + np.arange(3)[None]) % 3
    return np.take_along_axis(F, idx, axis=1)


def same_orientation(F1, F2):
    return np.array_equal(canonical(F1), canonical(F2))


def separated_faces(F, n):
    """n faces sharing no vertex with each other."""
    used, out = set(), []
    for i, f in enumerate(F.tolist()):
        if not used & set(f):
            out.append(i)
            used |= set(f)
            if len(out) == n:
                return np.array(out)
    raise AssertionError("not enough separated faces")


def two_spheres():
    V1, F1 = icosphere(10.0, 2, centre=(-30, 0, 0))
    V2, F2 = icosphere(5.0, 1, centre=(30, 0, 0))
    return np.vstack([V1, V2]), np.vstack([F1, F2 + len(V1)])


def hollow_sphere():
    """Outer sphere outward, inner cavity inward (as ct.labels produces)."""
    V1, F1 = icosphere(20.0, 2)
    V2, F2 = icosphere(10.0, 1)
    return np.vstack([V1, V2]), np.vstack([F1, F2[:, ::-1] + len(V1)])


# ------------------------------------------------------------------ construction
def test_construction_and_basic_properties():
    V, F = icosphere(10.0, 1)
    m = Mesh(V.astype(np.float32), F.astype(np.int32), name="ball")
    assert m.vertices.dtype == np.float64 and m.faces.dtype == np.int64
    assert m.vertices.shape == V.shape and m.faces.shape == F.shape
    assert m.n_faces == len(F)
    assert "ball" in repr(m) and str(len(F)) in repr(m)
    lo, hi = m.bounds
    np.testing.assert_allclose(lo, V.min(0), rtol=1e-6)
    np.testing.assert_allclose(hi, V.max(0), rtol=1e-6)
    # integral float faces are accepted
    assert np.array_equal(Mesh(V, F.astype(float)).faces, F)


def test_arrays_are_private_and_read_only():
    V, F = icosphere(10.0, 1)
    V0, F0 = V.copy(), F.copy()
    m = Mesh(V, F)
    with pytest.raises(ValueError):
        m.vertices[0, 0] = 1.0
    with pytest.raises(ValueError):
        m.faces[0, 0] = 1
    V[0, 0] = 123.0  # the caller's array stays writable and does not alias the mesh
    F[0, 0] = F[0, 1]
    np.testing.assert_array_equal(m.vertices, V0)
    np.testing.assert_array_equal(m.faces, F0)


def test_nan_and_inf_vertices_are_counted():
    V, F = icosphere(10.0, 1)
    V = V.copy()
    V[3, 1] = np.nan
    V[7, 0] = np.inf
    V[7, 2] = -np.inf
    with pytest.raises(ValueError, match=r"2 vertices contain NaN or inf \(first at index 3\)"):
        Mesh(V, F, name="bad")
    with pytest.raises(ValueError, match="'bad'"):
        Mesh(V, F, name="bad")


@pytest.mark.parametrize("faces,match", [
    (lambda n: [[0, 1, n]], r"face indices must lie in \[0, 3\]"),
    (lambda n: [[0, 1, -1]], r"face indices must lie in \[0, 3\]"),
    (lambda n: [[0, 1, 2, 3]], r"faces must have shape \(M, 3\)"),
    (lambda n: [0, 1, 2], r"faces must have shape \(M, 3\)"),
    (lambda n: np.zeros((0, 3), int), "no faces"),
    (lambda n: np.zeros((0, 3)), "no faces"),
    (lambda n: [[0, 1], [2, 3, 0]], "rectangular"),
])
def test_bad_faces_value_errors(faces, match):
    V = np.eye(4, 3)
    with pytest.raises(ValueError, match=match):
        Mesh(V, faces(len(V)))


@pytest.mark.parametrize("faces", [[[0, 1, 2.5]], [[0, 1, np.nan]], [[0, 1, np.inf]], [["a", "b", "c"]],
                                   np.ones((1, 3), bool)])
def test_non_integer_faces_type_error(faces):
    with pytest.raises(TypeError, match="faces must be integer"):
        Mesh(np.eye(3), faces)


def test_bad_vertices():
    with pytest.raises(ValueError, match=r"vertices must have shape \(N, 3\)"):
        Mesh(np.zeros((4, 2)), [[0, 1, 2]])
    with pytest.raises(ValueError, match=r"vertices must have shape \(N, 3\)"):
        Mesh(np.zeros(12), [[0, 1, 2]])
    with pytest.raises(TypeError, match="real numbers"):
        Mesh(np.eye(3) + 1j, [[0, 1, 2]])
    with pytest.raises(TypeError, match="real numbers"):
        Mesh(np.array([["a", "b", "c"]] * 3), [[0, 1, 2]])


# ------------------------------------------------------------------ check()
def test_closed_icosphere_is_watertight_and_outward():
    V, F = icosphere(10.0, 2)
    rep = Mesh(V, F).check()
    assert isinstance(rep, MeshReport)
    assert (rep.n_vertices, rep.n_faces) == (len(V), len(F))
    assert rep.watertight and rep.consistent and rep.outward
    assert (rep.degenerate_faces, rep.boundary_edges, rep.nonmanifold_edges, rep.misoriented_edges) == (0, 0, 0, 0)
    assert rep.components == 1
    assert rep.volume == pytest.approx(signed_volume(V, F))
    assert rep.problems() == []
    m = Mesh(V, F)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert m.oriented() is m


def test_removed_face_gives_three_boundary_edges():
    V, F = icosphere(10.0, 2)
    m = Mesh(V, np.delete(F, 17, axis=0))
    rep = m.check()
    assert rep.boundary_edges == 3 == edge_reference(m.faces)[0]
    assert not rep.watertight and not rep.consistent and not rep.outward
    assert any("watertight" in p for p in rep.problems())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert m.oriented() is m  # open meshes are returned unchanged, silently


def test_duplicated_face_is_nonmanifold():
    V, F = icosphere(10.0, 2)
    m = Mesh(V, np.vstack([F, F[5:6]]))
    rep = m.check()
    assert rep.nonmanifold_edges == 3 == edge_reference(m.faces)[1]
    assert rep.boundary_edges == 0
    assert not rep.watertight
    assert any("manifold" in p for p in rep.problems())
    assert m.oriented(warn=False) is m


def test_flipped_faces_are_counted_and_repaired():
    V, F = icosphere(10.0, 2)
    idx = separated_faces(F, 4)
    G = F.copy()
    G[idx] = G[idx, ::-1]
    m = Mesh(V, G)
    rep = m.check()
    assert rep.watertight and not rep.consistent and not rep.outward
    assert rep.misoriented_edges == 12 == edge_reference(G)[2]
    assert any("inconsistent orientation on 12 edges" in p for p in rep.problems())
    with pytest.warns(MeshWarning, match="inconsistently oriented"):
        fixed = m.oriented()
    assert same_orientation(fixed.faces, F)
    assert fixed.check().outward
    np.testing.assert_array_equal(fixed.vertices, V)


def test_adjacent_flipped_patch_matches_reference():
    V, F = icosphere(10.0, 2)
    G = F.copy()
    G[:7] = G[:7, ::-1]  # a patch of faces around vertex 0, some adjacent
    rep = Mesh(V, G).check()
    assert rep.misoriented_edges == edge_reference(G)[2] > 0
    assert same_orientation(Mesh(V, G).oriented(warn=False).faces, F)


def test_mostly_flipped_mesh_is_repaired_outward():
    V, F = icosphere(10.0, 2)
    idx = separated_faces(F, 3)
    G = F[:, ::-1].copy()
    G[idx] = F[idx]  # all but three faces inward
    with pytest.warns(MeshWarning):
        fixed = Mesh(V, G).oriented()
    assert same_orientation(fixed.faces, F)


def test_inward_mesh_is_flipped_back_with_warning():
    V, F = icosphere(10.0, 2)
    m = Mesh(V, F[:, ::-1])
    rep = m.check()
    assert rep.watertight and rep.consistent and not rep.outward
    assert rep.volume < 0
    assert any("inward" in p for p in rep.problems())
    with pytest.warns(MeshWarning, match="pointing inward"):
        fixed = m.oriented()
    assert same_orientation(fixed.faces, F)
    assert fixed.volume() == pytest.approx(-m.volume())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.oriented(warn=False)
        assert fixed.oriented() is fixed  # already outward: no warning, same object


def test_two_spheres_components_and_repair():
    V, F = two_spheres()
    m = Mesh(V, F)
    assert m.check().components == 2 and m.check().outward
    # flip the second sphere entirely and a few faces of the first: both come back outward
    G = F.copy()
    G[320:] = G[320:, ::-1]
    idx = separated_faces(F[:320], 3)
    G[idx] = G[idx, ::-1]
    with pytest.warns(MeshWarning):
        fixed = Mesh(V, G).oriented()
    assert same_orientation(fixed.faces[:320], F[:320])
    assert fixed.check().consistent
    assert fixed.volume() > 0


def test_cavity_survives_orientation_repair():
    V, F = hollow_sphere()
    m = Mesh(V, F)
    rep = m.check()
    assert rep.components == 2 and rep.outward  # consistent, positive total volume
    assert rep.volume == pytest.approx(signed_volume(*icosphere(20.0, 2)) - signed_volume(*icosphere(10.0, 1)))
    G = F.copy()
    idx = np.concatenate([separated_faces(F[:320], 2), 320 + separated_faces(F[320:], 2)])
    G[idx] = G[idx, ::-1]
    with pytest.warns(MeshWarning):
        fixed = Mesh(V, G).oriented()
    assert same_orientation(fixed.faces, F)  # the cavity still faces inward


def test_whole_hollow_sphere_inverted_is_flipped_back():
    V, F = hollow_sphere()
    with pytest.warns(MeshWarning):
        fixed = Mesh(V, F[:, ::-1]).oriented()
    assert same_orientation(fixed.faces, F)


def test_degenerate_faces_are_counted():
    V, F = box([0, 0, 0], [10, 10, 10])
    V2 = np.vstack([V, 0.5 * (V[0] + V[1])])  # midpoint of an edge of the box
    F2 = np.vstack([F, [[0, 1, 8]], [[2, 2, 3]]])  # collinear points; repeated vertex
    rep = Mesh(V2, F2).check()
    assert rep.degenerate_faces == 2
    assert any("2 degenerate" in p for p in rep.problems())
    assert Mesh(V, F).check().degenerate_faces == 0


# ------------------------------------------------------------------ geometry
@pytest.mark.parametrize("offset", [0.0, 1e6])
def test_box_volume_area_normals(offset):
    lo, hi = np.array([1.0, -2.0, 3.0]) + offset, np.array([4.0, 5.0, 3.5]) + offset
    m = Mesh(*box(lo, hi))
    a, b, c = hi - lo
    assert m.volume() == pytest.approx(a * b * c, rel=1e-9)
    assert m.area() == pytest.approx(2 * (a * b + b * c + c * a), rel=1e-12)
    assert m.check().outward
    n = m.face_normals()
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0)
    # every normal is an axis direction pointing away from the box centre
    centre = 0.5 * (lo + hi)
    fc = m.vertices[m.faces].mean(1)
    np.testing.assert_allclose(np.abs(n).max(1), 1.0, atol=1e-12)
    assert np.all(np.einsum("ij,ij->i", n, fc - centre) > 0)
    raw = m.face_normals(normalize=False)
    np.testing.assert_allclose(0.5 * np.linalg.norm(raw, axis=1).sum(), m.area())


@pytest.mark.parametrize("level", [1, 2, 3])
def test_icosphere_volume_and_area_bracketed(level):
    r = 7.0
    V, F = icosphere(r, level, centre=(100.0, -50.0, 20.0))
    m = Mesh(V, F)
    # inscribed convex polyhedron: contains the sphere of radius r_in (smallest face-plane distance)
    n = m.face_normals()
    r_in = np.einsum("ij,ij->i", n, V[F[:, 0]] - (100.0, -50.0, 20.0)).min()
    assert 0 < r_in < r
    assert 4 / 3 * np.pi * r_in**3 < m.volume() < 4 / 3 * np.pi * r**3
    assert 4 * np.pi * r_in**2 < m.area() < 4 * np.pi * r**2
    assert m.volume() == pytest.approx(signed_volume(V - V.mean(0), F), rel=1e-12)


def test_volume_converges_to_sphere():
    errs = [abs(Mesh(*icosphere(1.0, k)).volume() / (4 / 3 * np.pi) - 1) for k in (2, 3, 4)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 3e-3


def test_degenerate_face_normal_is_zero_not_nan():
    V = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0.0]])
    n = Mesh(V, [[0, 1, 2]]).face_normals()
    np.testing.assert_array_equal(n, 0.0)


# ------------------------------------------------------------------ transforms
def test_transformed_against_formula(rng):
    V, F = icosphere(10.0, 2, centre=(5, 6, 7))
    m = Mesh(V, F, "s")
    for _ in range(5):
        R = Rotation.random(random_state=rng).as_matrix()
        t, c = rng.normal(size=3) * 50, rng.normal(size=3) * 20
        out = m.transformed(R, t, c)
        np.testing.assert_allclose(out.vertices, (V - c) @ R.T + c + t, atol=1e-12)
        np.testing.assert_array_equal(out.faces, F)
        assert out.name == "s"
        assert out.volume() == pytest.approx(m.volume(), rel=1e-12)
        assert out.check().outward
    np.testing.assert_allclose(m.transformed(R).vertices, V @ R.T, atol=1e-12)
    np.testing.assert_allclose(m.translated([1, 2, 3]).vertices, V + [1, 2, 3])
    np.testing.assert_array_equal(m.transformed().vertices, V)
    np.testing.assert_allclose(m.transformed(t=np.array([[1.0], [2.0], [3.0]])).vertices, V + [1, 2, 3])


def test_transformed_bad_input():
    m = Mesh(*icosphere(10.0, 1))
    with pytest.raises(ValueError, match="rotation"):
        m.transformed(np.diag([1.0, 1.0, -1.0]))  # reflection
    with pytest.raises(ValueError, match="rotation"):
        m.transformed(2 * np.eye(3))
    with pytest.raises(ValueError, match="rotation"):
        m.transformed(np.eye(2))
    with pytest.raises(ValueError, match="rotation"):
        m.transformed(np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match="3-vectors"):
        m.transformed(t=[1.0, 2.0])
    with pytest.raises(ValueError, match="3-vectors"):
        m.transformed(centre=np.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        m.translated([np.nan, 0, 0])


# ------------------------------------------------------------------ file I/O
FORMATS = [("stl", {}), ("stl", {"binary": True}), ("obj", {}), ("ply", {}), ("ply", {"binary": False}),
           ("off", {}), ("vtk", {}), ("vtk", {"binary": False}), ("vtu", {})]


@pytest.mark.parametrize("ext,opts", FORMATS, ids=[f"{e}-{o}" for e, o in FORMATS])
def test_save_load_round_trip(tmp_path, ext, opts):
    V, F = icosphere(10.0, 2, centre=(1.25, -3.5, 7.0))
    m = Mesh(V, F, "ball")
    path = tmp_path / f"ball.{ext}"
    m.save(path, **opts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loading is quiet
        back = Mesh.load(path)
    assert back.name == "ball"
    assert len(back.vertices) == len(V) and len(back.faces) == len(F)  # STL's triangle soup is merged
    exact = not (ext == "stl" and opts.get("binary"))  # binary STL stores float32
    # the same triangles, in the same order, with the same vertex order (orientation)
    if exact:
        np.testing.assert_array_equal(back.vertices[back.faces], V[F])
    else:
        np.testing.assert_allclose(back.vertices[back.faces], V[F], rtol=1e-6, atol=1e-6)
    if ext != "stl":  # indexed formats: vertex order and faces unchanged
        np.testing.assert_array_equal(back.vertices, V)
        np.testing.assert_array_equal(back.faces, F)
    assert back.volume() == pytest.approx(m.volume(), rel=1e-12 if exact else 1e-6)
    assert back.check().outward


def test_stl_soup_is_merged_preserving_first_occurrence(tmp_path):
    V, F = box([0, 0, 0], [2, 3, 4])
    path = tmp_path / "b.stl"
    Mesh(V, F).save(path)
    back = Mesh.load(path)
    assert len(back.vertices) == 8 and len(back.faces) == 12
    # first-occurrence order of the triangle soup
    soup = V[F].reshape(-1, 3)
    _, first = np.unique(soup, axis=0, return_index=True)
    np.testing.assert_array_equal(back.vertices, soup[np.sort(first)])
    assert back.check().outward
    assert back.volume() == pytest.approx(24.0)


def test_merge_vertices_option(tmp_path):
    V, F = box([0, 0, 0], [2, 3, 4])
    soup_V, soup_F = V[F].reshape(-1, 3), np.arange(36).reshape(12, 3)
    path = tmp_path / "soup.obj"
    Mesh(soup_V, soup_F).save(path)
    merged = Mesh.load(path)
    assert len(merged.vertices) == 8 and merged.check().outward
    _, first = np.unique(soup_V, axis=0, return_index=True)
    np.testing.assert_array_equal(merged.vertices, soup_V[np.sort(first)])
    np.testing.assert_array_equal(merged.vertices[merged.faces], V[F])
    unmerged = Mesh.load(path, merge_vertices=False)
    assert len(unmerged.vertices) == 36 and unmerged.check().boundary_edges == 36


def test_load_quads_and_unused_vertices(tmp_path):
    path = tmp_path / "cube.obj"
    lines = ["v 9 9 9"]  # an unused vertex
    lines += [f"v {x} {y} {z}" for x in (0, 1) for y in (0, 1) for z in (0, 1)]
    quads = [[1, 2, 4, 3], [5, 7, 8, 6], [1, 5, 6, 2], [3, 4, 8, 7], [1, 3, 7, 5], [2, 6, 8, 4]]
    lines += ["f " + " ".join(str(i + 1) for i in q) for q in quads]  # 1-based; +1 for the extra vertex
    path.write_text("\n".join(lines) + "\n")
    m = Mesh.load(path)
    assert len(m.vertices) == 8 and len(m.faces) == 12
    rep = m.check()
    assert rep.watertight and rep.consistent
    assert abs(m.volume()) == pytest.approx(1.0)
    assert m.area() == pytest.approx(6.0)


def test_save_refuses_to_overwrite(tmp_path):
    m = Mesh(*box([0, 0, 0], [1, 1, 1]))
    path = tmp_path / "b.ply"
    m.save(path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        m.translated([5, 0, 0]).save(path)
    assert path.read_bytes() == before
    m.translated([5, 0, 0]).save(str(path), overwrite=True)
    assert Mesh.load(path).bounds[0][0] == pytest.approx(5.0)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.stl"):
        Mesh.load(tmp_path / "nope.stl")
    garbage = tmp_path / "garbage.stl"
    garbage.write_text("this is not a mesh\n")
    with pytest.raises(ValueError, match="garbage.stl"):
        Mesh.load(garbage)
    empty = tmp_path / "empty.obj"
    empty.write_text("# nothing\n")
    with pytest.raises(ValueError, match="empty.obj"):
        Mesh.load(empty)
    unknown = tmp_path / "thing.xyzq"
    unknown.write_text("1 2 3\n")
    with pytest.raises(ValueError, match="thing.xyzq"):
        Mesh.load(unknown)
    with pytest.raises(ValueError, match="no triangle"):
        import meshio

        p = str(tmp_path / "tet.vtu")
        meshio.write(p, meshio.Mesh(np.eye(4, 3), [("tetra", np.array([[0, 1, 2, 3]]))]))
        Mesh.load(p)


def test_save_unknown_extension(tmp_path):
    with pytest.raises(ValueError, match="thing.xyzq"):
        Mesh(*box([0, 0, 0], [1, 1, 1])).save(tmp_path / "thing.xyzq")
    assert not os.path.exists(tmp_path / "thing.xyzq")
