"""Tests for taichi_xray.fit.ssm (PCA shape model and synthetic populations)."""
import numpy as np
import pytest
import torch

from taichi_xray.fit.ssm import ShapeModel, SyntheticPopulation, synthetic_population


from taichi_xray.primitives import icosphere  # noqa: E402


@pytest.fixture(scope="module")
def template():
    v, f = icosphere(20.0, 2)  # 162 vertices, 320 faces
    return v * np.array([1.0, 0.6, 2.5]), f  # elongated, bone-like proportions


@pytest.fixture(scope="module")
def population(template):
    v, f = template
    return synthetic_population(v, f, n=12, seed=3, scale_sd=0.05, displacement_mm=2.0, n_bases=8)


def _face_normals(v, f):
    return np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])


def _volume(v, f):
    return np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6.0


def test_synthetic_population_is_plausible(template, population):
    v, f = template
    assert isinstance(population, SyntheticPopulation) and population.synthetic
    assert len(population) == 12 and np.array_equal(population.faces, f)
    n0 = _face_normals(v, f)
    vol0 = _volume(v, f)
    rms = []
    for s in population:
        assert s.shape == v.shape and np.all(np.isfinite(s))
        # no inverted triangle: every face keeps its orientation
        assert np.all(np.einsum("ij,ij->i", _face_normals(s, f), n0) > 0)
        assert 0.7 < _volume(s, f) / vol0 < 1.3
        rms.append(np.sqrt(((s - v) ** 2).sum(1).mean()))
    assert 0.5 < np.mean(rms) < 10.0  # mm: moderate, non-trivial variation
    # deterministic given the seed, different for another seed
    again = synthetic_population(v, f, n=12, seed=3, scale_sd=0.05, displacement_mm=2.0, n_bases=8)
    np.testing.assert_array_equal(again.as_array(), population.as_array())
    other = synthetic_population(v, f, n=2, seed=4)
    assert not np.allclose(other[0], population[0])


def test_large_amplitude_is_clamped_without_inversion(template):
    v, f = template
    pop = synthetic_population(v, f, n=5, seed=0, displacement_mm=40.0)
    assert pop.params["n_clamped"] == 5
    n0 = _face_normals(v, f)
    for s in pop:
        assert np.all(np.einsum("ij,ij->i", _face_normals(s, f), n0) > 0)


def test_fit_reproduces_training_shapes(population):
    model = ShapeModel.fit(population, population.faces)
    assert model.synthetic and model.n_components == 11  # S - 1
    X = population.as_array()
    beta = model.project(X)
    rec = model.vertices(beta)
    np.testing.assert_allclose(rec, X, atol=1e-5)
    assert np.abs(rec - X).max() < 1e-9
    np.testing.assert_allclose(model.explained_variance_ratio.sum(), 1.0)
    # components orthonormal, std decreasing, training coefficients have unit variance
    C = model.components.reshape(model.n_components, -1)
    np.testing.assert_allclose(C @ C.T, np.eye(11), atol=1e-10)
    assert np.all(np.diff(model.std) <= 0)
    np.testing.assert_allclose(beta.var(0, ddof=1), 1.0, rtol=1e-8)


def test_truncation_error_matches_discarded_variance(population):
    X = population.as_array()
    S = len(X)
    D = (X - X.mean(0)).reshape(S, -1)
    eig = np.sort(np.linalg.eigvalsh(D @ D.T))[::-1]  # independent route: Gram-matrix eigenvalues
    for K in (1, 3, 6):
        model = ShapeModel.fit(list(population), population.faces, n_components=K, synthetic=True)
        res = model.vertices(model.project(X)) - X
        np.testing.assert_allclose((res**2).sum(), eig[K:].sum(), rtol=1e-8)
        np.testing.assert_allclose(model.std**2, eig[:K] / (S - 1), rtol=1e-8)
    # variance fraction
    frac = np.cumsum(eig) / eig.sum()
    m = ShapeModel.fit(population, population.faces, n_components=0.9)
    assert m.n_components == int(np.searchsorted(frac, 0.9) + 1)
    assert m.explained_variance_ratio.sum() >= 0.9
    with pytest.raises(ValueError, match="n_components"):
        ShapeModel.fit(population, population.faces, n_components=50)
    with pytest.raises(ValueError, match="n_components"):
        ShapeModel.fit(population, population.faces, n_components=1.5)


def test_torch_vertices_and_gradient(population):
    model = ShapeModel.fit(population, population.faces, n_components=5)
    beta = torch.tensor([0.5, -1.0, 0.2, 0.0, 0.3], dtype=torch.float64, requires_grad=True)
    v = model.vertices(beta)
    assert v.shape == (model.n_vertices, 3) and v.dtype == torch.float64
    np.testing.assert_allclose(v.detach().numpy(), model.vertices(beta.detach().numpy()), atol=1e-12)
    # d v / d beta_i = std_i * PC_i
    w = torch.tensor(np.random.default_rng(0).normal(size=v.shape))
    (g,) = torch.autograd.grad((v * w).sum(), beta)
    expected = model.std * np.einsum("knj,nj->k", model.components, w.numpy())
    np.testing.assert_allclose(g.numpy(), expected, rtol=1e-10)
    assert torch.autograd.gradcheck(lambda b: model.vertices(b), (beta,))
    # prior and batches, float32
    loss = model.mahalanobis_prior(beta)
    (gp,) = torch.autograd.grad(loss, beta)
    torch.testing.assert_close(gp, beta.detach())
    assert float(loss.detach()) == pytest.approx(0.5 * float((beta.detach() ** 2).sum()))
    vb = model.vertices(torch.zeros(4, 3))
    assert vb.shape == (4, model.n_vertices, 3) and vb.dtype == torch.float32
    np.testing.assert_allclose(vb[2].numpy(), model.mean, atol=1e-4)
    assert model.mahalanobis_prior(np.ones((4, 5))).shape == (4,)
    with pytest.raises(ValueError, match="beta"):
        model.vertices(torch.zeros(6))


def test_save_load_roundtrip(tmp_path, population):
    model = ShapeModel.fit(population, population.faces, n_components=4)
    assert "SYNTHETIC" in repr(model)
    p = tmp_path / "ssm.npz"
    model.save(p)
    with pytest.raises(FileExistsError):
        model.save(p)
    model.save(p, overwrite=True)
    m2 = ShapeModel.load(p)
    assert m2.synthetic and "SYNTHETIC" in repr(m2)
    for a in ("mean", "components", "std", "faces"):
        np.testing.assert_array_equal(getattr(m2, a), getattr(model, a))
    np.testing.assert_allclose(m2.explained_variance_ratio, model.explained_variance_ratio)
    # a model from real (non-synthetic) shapes says nothing about SYNTHETIC
    real = ShapeModel.fit(population.as_array(), population.faces)
    assert not real.synthetic and "SYNTHETIC" not in repr(real)
    real.save(tmp_path / "real.npz")
    assert not ShapeModel.load(tmp_path / "real.npz").synthetic
    with pytest.raises(FileNotFoundError):
        ShapeModel.load(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="npz"):
        model.save(tmp_path / "ssm.txt")
    np.savez(tmp_path / "bad.npz", mean=np.zeros((3, 3)))
    with pytest.raises(KeyError, match="missing"):
        ShapeModel.load(tmp_path / "bad.npz")


def test_fit_validation(template):
    v, f = template
    with pytest.raises(ValueError, match="at least 2"):
        ShapeModel.fit([v], f)
    with pytest.raises(ValueError, match="no variation"):
        ShapeModel.fit([v, v.copy()], f)
    with pytest.raises(ValueError, match="faces"):
        ShapeModel.fit([v, v * 1.1], f + 1000)
    with pytest.raises(ValueError, match="same shape"):
        ShapeModel.fit([v, v[:-1]], f)
