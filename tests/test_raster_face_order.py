"""The forward kernel traverses large meshes in a cache-friendly face order (rasterize._face_order):
face ids in the slots, coverage and path lengths must not depend on it."""
import importlib

import numpy as np
import pytest
import torch

import taichi_xray as tx
from reference import scattered_icosphere as _scattered
from taichi_xray.rasterize import REORDER_FACES

pytestmark = pytest.mark.filterwarnings("error::taichi_xray.mesh.MeshWarning")

_txr = importlib.import_module("taichi_xray.rasterize")  # the module (tx.rasterize is the function)
RADIUS = 40.0


def scattered_icosphere(level):
    return _scattered(level, RADIUS)


@pytest.fixture(scope="module")
def scene():
    V, F = scattered_icosphere(6)  # 81920 faces: above REORDER_FACES
    assert len(F) >= REORDER_FACES
    cam = tx.Camera.c_arm(sid=400.0, sdd=600.0, width=56, height=48, pixel_spacing=2.0, radiological=False)
    return V, F, cam


def test_large_scattered_mesh_is_reordered_and_slots_hold_user_face_ids(scene):
    V, F, cam = scene
    m = tx.Mesh(V, F, "sphere")
    r = tx.rasterize(m, cam, check_balance=True)
    assert r._rasterizer._ft.order is None  # a first call keeps the order (a one-off need not pay)
    r = tx.rasterize(m, cam, check_balance=True)  # the second call on the Mesh's tables sets it
    rz = r._rasterizer
    assert rz._ft.order is not None  # the traversal order differs from the face order here
    assert r.n_fixed.sum() == 0  # watertight: every ray enters as often as it leaves
    count = r.count.numpy()
    assert count.max() == 2 and (count == 2).sum() > 500 and set(np.unique(count)) <= {0, 2}
    # each slot: its face id (user numbering) must be a face the pixel's ray crosses, at that signed depth
    rows, cols = np.nonzero(count)
    d = cam.pixel_rays(normalize=True)[rows, cols]  # (n, 3)
    s = cam.source
    for k in range(2):
        f = r.slot_face.numpy()[rows, cols, k]
        v0, v1, v2 = V[F[f, 0]], V[F[f, 1]], V[F[f, 2]]
        n = np.cross(v1 - v0, v2 - v0)
        nd = np.einsum("ij,ij->i", n, d)
        t = np.einsum("ij,ij->i", n, v0 - s) / nd
        x = s + t[:, None] * d
        area = np.einsum("ij,ij->i", n, n)
        b0 = np.einsum("ij,ij->i", n, np.cross(v1 - x, v2 - x)) / area
        b1 = np.einsum("ij,ij->i", n, np.cross(v2 - x, v0 - x)) / area
        assert (b0 > -1e-3).all() and (b1 > -1e-3).all() and (b0 + b1 < 1 + 1e-3).all()
        np.testing.assert_allclose(r.slot_depth.numpy()[rows, cols, k], np.where(nd > 0, t, -t), atol=2e-3)


def test_spatial_order_tables(scene):
    """The traversal order is a permutation of the faces, rows unchanged, and the projection buffer's
    positions are a permutation of the vertices that the rows read in nearly sequential order."""
    V, F, cam = scene
    m = tx.Mesh(V, F, "sphere")
    tx.rasterize(m, cam, keep_slots=False)
    ft = tx.rasterize(m, cam, keep_slots=False)._rasterizer._ft
    order, rows = ft.fid.numpy(), ft.F_run.numpy()
    assert sorted(order) == list(range(len(F)))
    F_run = F[order]
    # each row: the face's indices in increasing order, and +1 / -1 where that order keeps / reverses
    # the face's orientation (the face itself, reversed when -1, is a rotation of the row)
    assert rows.shape == (len(F), 4) and set(np.unique(rows[:, 3])) == {-1, 1}
    np.testing.assert_array_equal(rows[:, :3], np.sort(F_run, axis=1))
    face = np.where(rows[:, 3:] == 1, rows[:, :3], rows[:, [0, 2, 1]])
    assert all(any((np.roll(F_run[t], k) == face[t]).all() for k in range(3)) for t in range(0, len(F), 97))
    vpos = ft.vpos.numpy()
    assert sorted(vpos) == list(range(len(V)))
    np.testing.assert_array_equal(ft.F_pos.numpy(), vpos[rows[:, :3]])
    # consecutive faces read nearby positions (the user's order of this mesh scatters them)
    step = np.median(np.abs(np.diff(ft.F_pos.numpy().min(1).astype(np.int64))))
    step_user = np.median(np.abs(np.diff(F.min(1).astype(np.int64))))
    assert step <= 8 and step_user > 50
    # consecutive faces lie side by side: mean centroid step well below the sphere's size
    c = V[F_run].mean(1)
    assert np.linalg.norm(np.diff(c, axis=0), axis=1).mean() < 0.05 * RADIUS


def test_path_lengths_do_not_depend_on_the_face_order(scene, monkeypatch):
    V, F, cam = scene
    L = tx.path_length(tx.Mesh(V, F, "sphere"), cam)
    with monkeypatch.context() as mp:  # the faces traversed as given
        mp.setattr(_txr, "REORDER_FACES", 10 ** 9)
        r = tx.rasterize(tx.Mesh(V, F, "sphere"), cam)
        assert r._rasterizer._ft.order is None and r._rasterizer._ft.vpos is None
        np.testing.assert_allclose(r.numpy()[0], L, atol=1e-4)
        np.testing.assert_array_equal(r.count.numpy() > 0, tx.rasterize(tx.Mesh(V, F, "sphere"), cam)
                                      .count.numpy() > 0)  # and it covers the same pixels
    Ld = tx.rasterize(tx.Mesh(V, F, "sphere"), cam, deterministic=True).numpy()[0]
    np.testing.assert_allclose(Ld, L, atol=1e-3)
    # and the chord of the ideal sphere away from the silhouette (polyhedron within 0.05 % of R)
    d = cam.pixel_rays(normalize=True)
    b = d @ cam.source
    disc = b * b - (cam.source @ cam.source - RADIUS ** 2)
    inner = np.sqrt(np.maximum(cam.source @ cam.source - b * b, 0)) < 0.8 * RADIUS
    assert inner.sum() > 300
    np.testing.assert_allclose(L[inner], 2 * np.sqrt(disc[inner]), atol=0.15)


def test_float64_reference_point_computed_in_the_kernel(scene):
    """The reference point (centre of the vertices' bounds and its depth) is reduced in the kernel."""
    V, F, cam = scene
    Vs = V + np.array([5.0, -3.0, 2.0])
    r = tx.rasterize(tx.Mesh(Vs, F, "sphere"), cam, dtype=torch.float64, keep_slots=False)
    ref = r._state.ref.numpy()[0]
    c = 0.5 * (Vs.min(0) + Vs.max(0))
    np.testing.assert_allclose(ref[:3], c, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ref[3], cam.P[2, :3] @ c + cam.P[2, 3], rtol=1e-12)
