"""Face tables kept with a Mesh (rasterize() caches the packing, the traversal order and the per-object
tables on the Mesh) and face tables read in traversal order by the forward kernel (rasterize._FaceTables):
a later call must never be served another mesh's tables, and per-face weights and balance indices must
follow their faces when the faces are traversed in another order."""
import importlib
import warnings

import numpy as np
import pytest
import torch

import taichi_xray as tx
from reference import scattered_icosphere as _scattered
from taichi_xray.rasterize import REORDER_FACES, Rasterizer

_txr = importlib.import_module("taichi_xray.rasterize")  # the module (tx.rasterize is the function)
RADIUS = 40.0


def scattered_icosphere(level):
    return _scattered(level, RADIUS)


@pytest.fixture(scope="module")
def scene():
    V, F = scattered_icosphere(6)  # 81920 faces
    assert len(F) >= REORDER_FACES
    cam = tx.Camera.c_arm(sid=400.0, sdd=600.0, width=40, height=36, pixel_spacing=2.5, radiological=False)
    return V, F, cam


def test_fresh_calls_on_a_mesh_reuse_its_tables_and_other_meshes_get_their_own(scene):
    V, F, cam = scene
    a = tx.Mesh(V, F, "a")
    r1 = tx.rasterize(a, cam, keep_slots=False)
    r2 = tx.rasterize(a, cam, keep_slots=False)
    assert r2._rasterizer._ft is r1._rasterizer._ft  # cached with the Mesh
    assert r2._rasterizer._ft.order is not None  # reordered by the second call on the tables
    assert torch.equal(r1.L, r2.L)  # two faces per pixel: their sum does not depend on the order
    # same shapes, other faces (reflected sphere, faces flipped to stay outward): not served a's tables
    b = tx.Mesh(V * np.array([1.0, 1.0, -1.0]), F[:, ::-1], "b")
    rb = tx.rasterize(b, cam, keep_slots=False, check_balance=True)
    assert rb._rasterizer._ft is not r1._rasterizer._ft
    assert torch.equal(rb.faces.cpu(), torch.as_tensor(F[:, ::-1].astype(np.int32)))
    assert rb.n_fixed.sum() == 0  # watertight and outward with b's own faces
    # a list [a, c] then [a, a] (c: a shifted 12 mm): the packing cached on a is for the exact list
    c = tx.Mesh(V + np.array([12.0, 0.0, 0.0]), F, "c")
    rc = tx.rasterize(c, cam, keep_slots=False)
    rac = tx.rasterize([a, c], cam, keep_slots=False)
    raa = tx.rasterize([a, a], cam, keep_slots=False)
    assert rac._rasterizer._ft is not raa._rasterizer._ft
    assert np.abs(rc.L.numpy()[0] - r1.L.numpy()[0]).max() > 5.0  # c's image differs from a's
    for q in (0, 1):
        np.testing.assert_allclose(raa.L[q].numpy(), r1.L.numpy()[0], atol=1e-3)
    np.testing.assert_allclose(rac.L[0].numpy(), r1.L.numpy()[0], atol=1e-3)
    np.testing.assert_allclose(rac.L[1].numpy(), rc.L.numpy()[0], atol=1e-3)
    r3 = tx.rasterize(a, cam, keep_slots=False)  # a alone again after [a, a]
    assert r3._rasterizer._ft is r1._rasterizer._ft and len(r3.faces) == len(F)
    np.testing.assert_array_equal(r3.L.numpy(), r1.L.numpy())


def test_per_face_weights_follow_their_faces_in_traversal_order(scene, monkeypatch):
    """Random per-face weights on a reordered mesh against the same faces given in an order that is kept
    (so the tables are read by face id): every pixel sums the same two weighted terms."""
    V, F, cam = scene
    rng = np.random.default_rng(3)
    w = rng.uniform(0.5, 2.0, (len(F), 2))
    ch = np.stack([np.zeros(len(F)), np.where(rng.random(len(F)) < 0.5, 1, -1)], 1).astype(np.int32)
    Vt = torch.tensor(V[None], dtype=torch.float64)
    out = []
    for kept in (False, True):
        with monkeypatch.context() as mp:
            if kept:  # the faces traversed as given
                mp.setattr(_txr, "REORDER_FACES", 10 ** 9)
            rz = Rasterizer(F, np.zeros(len(F), np.int32), ch, w, 2, [cam], dtype=torch.float64)
            rz.forward(Vt, keep_slots=True)  # the order is set by the second pass
            out.append((rz, rz.forward(Vt, keep_slots=True)))
    (rz0, s0), (rz1, s1) = out
    assert rz0._ft.order is not None and rz1._ft.order is None
    np.testing.assert_allclose(s0.L.numpy(), s1.L.numpy(), rtol=1e-12, atol=1e-12)
    # independent reference from the slots: sum over each pixel's faces of w x (signed depth - w0 |d|)
    d = cam.pixel_rays(normalize=False)
    dl = np.linalg.norm(d, axis=-1)
    w0 = s0.ref.numpy()[0, 3]
    n = s0.count.numpy()[0]
    ref = np.zeros((2,) + n.shape)
    for k in range(int(n.max())):
        m = n > k
        f = s0.slot_face.numpy()[0][..., k][m]
        sd = s0.slot_depth.numpy()[0][..., k][m]
        sdr = sd - np.sign(sd) * w0 * dl[m]
        for j in range(2):
            c = ch[f, j]
            for q in (0, 1):
                sel = c == q
                ref[q][tuple(a[sel] for a in np.nonzero(m))] += w[f[sel], j] * sdr[sel]
    np.testing.assert_allclose(s0.L.numpy()[0], ref, atol=1e-9)
    # new weights after construction follow the faces too
    rz0.set_weights(ch, 2 * w)
    s2 = rz0.forward(Vt, keep_slots=False)
    np.testing.assert_allclose(s2.L.numpy(), 2 * s1.L.numpy(), rtol=1e-12, atol=1e-12)


def test_balance_of_an_open_reordered_mesh(scene, monkeypatch):
    """An open mesh's balance indices are read in traversal order: the same unbalanced pixels as the
    same faces in an order that is kept."""
    V, F, cam = scene
    keep = np.ones(len(F), bool)
    keep[np.argsort(V[F].mean(1)[:, 1])[-400:]] = False  # a hole on the side facing the source
    G = F[keep]
    res = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kept in (False, True):
            with monkeypatch.context() as mp:
                if kept:  # the faces traversed as given
                    mp.setattr(_txr, "REORDER_FACES", 10 ** 9)
                m = tx.Mesh(V, G, "open")
                tx.rasterize(m, cam, keep_slots=False, fix_unbalanced=False)  # the order is set by the second call
                r = tx.rasterize(m, cam, keep_slots=False, fix_unbalanced=False)
            res.append(r)
    assert res[0]._rasterizer._ft.order is not None and res[1]._rasterizer._ft.order is None
    assert res[0].n_fixed[0] > 20
    assert res[0].n_fixed[0] == res[1].n_fixed[0]
    np.testing.assert_array_equal(res[0].flags.numpy(), res[1].flags.numpy())


def test_path_length_keeps_its_rasterizer_with_the_mesh(scene):
    """path_length() reuses the rasterizer kept with the Mesh (no allocation or binding after the first
    call) and still returns a new array every call, equal to a fresh rasterization."""
    V, F, cam = scene
    m = tx.Mesh(V, F, "kept")
    cam2 = tx.Camera.c_arm(sid=400.0, sdd=600.0, width=40, height=36, pixel_spacing=2.5, radiological=False,
                           lao=30.0, isocenter=(12.0, 0.0, 6.0))
    a = tx.path_length(m, cam)
    pk = next(iter(m.__dict__["_tx_prepared"]["packed"].values()))[1]
    kept = pk.kept[(36, 40, torch.float32)]
    b = tx.path_length(m, cam2)
    c = tx.path_length(m, cam)
    assert pk.kept[(36, 40, torch.float32)]._rasterizer is kept._rasterizer  # reused, not rebuilt
    assert not np.shares_memory(a, c) and not np.shares_memory(a, b)
    np.testing.assert_allclose(c, a, atol=1e-4)  # the second view did not leak into the third call
    fresh = tx.rasterize(m, cam2, keep_slots=False).numpy()[0]
    np.testing.assert_allclose(b, fresh, atol=1e-4)
    assert np.abs(b - a).max() > 10.0  # the second view sees the sphere shifted
    # another size or dtype gets its own rasterizer
    small = tx.Camera.c_arm(sid=400.0, sdd=600.0, width=20, height=18, pixel_spacing=5.0, radiological=False)
    assert tx.path_length(m, small).shape == (18, 20)
    assert tx.path_length(m, cam, dtype=torch.float64).dtype == np.float64
    assert len(pk.kept) == 3


def test_sorted_rows_and_their_parity():
    """The forward kernel's rows: indices in increasing order and +1 / -1 the sign of the permutation
    that sorted them (reference: the parity of the number of inversions), for every order of a face."""
    rng = np.random.default_rng(3)
    F = np.array([rng.choice(1000, 3, replace=False) for _ in range(500)], dtype=np.int32)
    F = np.concatenate([F, np.array([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]], np.int32)])
    rows = _txr._sorted_rows(F)
    inversions = (F[:, 0] > F[:, 1]).astype(int) + (F[:, 0] > F[:, 2]) + (F[:, 1] > F[:, 2])
    np.testing.assert_array_equal(rows[:, :3], np.sort(F, axis=1))
    np.testing.assert_array_equal(rows[:, 3], np.where(inversions % 2 == 0, 1, -1))
    np.testing.assert_array_equal(rows[-6:, 3], [1, -1, -1, 1, 1, -1])


def test_face_rotations_and_row_order_change_nothing():
    """A face given from another corner (same orientation) renders the same: the kernel's rows are the
    sorted indices, so coverage and the signed depths are bit-identical; reversing every face of a
    closed mesh (inward) is repaired by Mesh and renders the same path lengths."""
    V, F = scattered_icosphere(3)
    cam = tx.Camera.c_arm(sid=400.0, sdd=600.0, width=48, height=40, pixel_spacing=2.0, radiological=False)
    rng = np.random.default_rng(5)
    k = rng.integers(0, 3, len(F))
    G = np.stack([np.roll(f, s) for f, s in zip(F, k)])
    a = tx.rasterize(tx.Mesh(V, F, "a"), cam)
    b = tx.rasterize(tx.Mesh(V, G, "b"), cam)
    assert torch.equal(a.count, b.count) and torch.equal(a.L, b.L)
    assert float(a.L.max()) > 50.0  # the sphere (radius 40 mm) is in view
    with pytest.warns(UserWarning):
        c = tx.rasterize(tx.Mesh(V, F[:, ::-1].copy(), "c"), cam)
    np.testing.assert_allclose(c.numpy(), a.numpy(), atol=1e-4)
