import numpy as np
import pytest
import torch

from taichi_xray.physics import (Detector, Spectrum, add_poisson_noise, beer_lambert,
                                 beer_lambert_backward, exclusive_lengths, get_material,
                                 line_integral, mu_matrix, render_intensity, transmission)
from taichi_xray.physics.attenuation import BeerLambertFunction


def _ref(L, mu, w):  # plain numpy reference
    return (w[None, None, :] * np.exp(-np.einsum("pe,phw->hwe", mu, L))).sum(-1)


def test_monochromatic_slab_analytic():
    L = np.linspace(0, 100, 12).reshape(1, 3, 4)
    s = Spectrum.monochromatic(60.0)
    T = transmission(L, [-1], ["water"], s)
    assert np.allclose(T, np.exp(-0.02059 * L[0]), rtol=2e-3)  # NIST water 60 keV, 1/mm
    mu = get_material("water").mu([60.0])[0]
    assert np.allclose(T, np.exp(-mu * L[0]), rtol=1e-12)
    assert np.allclose(line_integral(L, [-1], ["water"], s), mu * L[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_polychromatic_vs_numpy(dtype, tol):
    rng = np.random.default_rng(0)
    s = Spectrum.tungsten(90)
    mu = mu_matrix(["soft_tissue", "cortical_bone", "iodine_contrast"], s.energies)
    w = s.photons * Detector("energy", ("CsI", 0.6)).response(s.energies)
    L = rng.uniform(0, 30, (3, 7, 5))
    I = beer_lambert(L.astype(dtype), mu.astype(dtype), w.astype(dtype))
    assert I.dtype == dtype and I.shape == (7, 5)
    ref = _ref(L, mu, w)
    assert np.allclose(I, ref, rtol=tol, atol=0)
    It = beer_lambert(*(torch.tensor(a.astype(dtype)) for a in (L, mu, w)))
    assert isinstance(It, torch.Tensor) and It.dtype == torch.from_numpy(np.zeros(1, dtype)).dtype
    assert np.allclose(It.numpy(), ref, rtol=tol, atol=0)


def test_beam_hardening():
    s = Spectrum.tungsten(80)
    t = np.array([1.0, 10.0, 50.0, 100.0, 200.0])
    L = t.reshape(1, 1, -1)
    T = transmission(L, [-1], ["water"], s)[0]
    mu_eff = -np.log(T) / t
    assert np.all(np.diff(mu_eff) < 0)
    mu = get_material("water").mu(s.energies)
    assert mu.min() < mu_eff[-1] < mu_eff[0] < mu.max()


def test_nested_equals_explicit_subtraction():
    rng = np.random.default_rng(1)
    H, W = 6, 5
    body = rng.uniform(100, 200, (H, W))
    bone = rng.uniform(10, 40, (H, W))
    marrow = bone * rng.uniform(0.1, 0.5, (H, W))
    L = np.stack([body, bone, marrow])
    parents = [-1, 0, 1]
    Lx = exclusive_lengths(L, parents)
    assert np.allclose(Lx, np.stack([body - bone, bone - marrow, marrow]))
    s = Spectrum.tungsten(100)
    mats = ["soft_tissue", "cortical_bone", "trabecular_bone"]
    I = render_intensity(L, parents, mats, s)
    I_expl = beer_lambert(np.stack([body - bone, bone - marrow, marrow]), mu_matrix(mats, s.energies),
                          s.photons)
    assert np.allclose(I, I_expl, rtol=1e-12)
    # air term: ray length minus the top-level object
    R = np.full((H, W), 1000.0)
    Lxa = exclusive_lengths(L, parents, ray_lengths=R)
    assert Lxa.shape == (4, H, W) and np.allclose(Lxa[3], R - body)
    # torch path gives the same
    Lt = exclusive_lengths(torch.tensor(L), parents, ray_lengths=torch.tensor(R))
    assert np.allclose(Lt.numpy(), Lxa)


def test_mu_scale():
    L = np.full((1, 2, 2), 20.0)
    s = Spectrum.monochromatic(50.0)
    mu = get_material("water").mu([50.0])[0]
    T = transmission(L, [-1], ["water"], s, mu_scale=[1.5])
    assert np.allclose(T, np.exp(-1.5 * mu * 20.0))


@pytest.mark.parametrize("method", ["analytic", "autodiff"])
def test_backward_vs_central_differences(method):
    rng = np.random.default_rng(2)
    P, H, W, E = 3, 3, 4, 5
    L = rng.uniform(0, 20, (P, H, W))
    mu = rng.uniform(0.01, 0.08, (P, E))
    w = rng.uniform(0.5, 2.0, E)
    g = rng.normal(size=(H, W))
    gL, gmu, gw = beer_lambert_backward(L, mu, w, g, return_weights_grad=True, method=method, chunk=2)
    assert gL.shape == (P, H, W) and gmu.shape == (P, E) and gL.dtype == np.float64

    def loss(L_, mu_, w_):
        return float((beer_lambert(L_, mu_, w_) * g).sum())

    h = 1e-6
    for idx in [(0, 0, 0), (1, 2, 3), (2, 1, 2)]:
        Lp, Lm = L.copy(), L.copy()
        Lp[idx] += h
        Lm[idx] -= h
        fd = (loss(Lp, mu, w) - loss(Lm, mu, w)) / (2 * h)
        assert gL[idx] == pytest.approx(fd, rel=1e-6, abs=1e-9)
    for idx in [(0, 0), (1, 3), (2, 4)]:
        mp, mm = mu.copy(), mu.copy()
        mp[idx] += h
        mm[idx] -= h
        fd = (loss(L, mp, w) - loss(L, mm, w)) / (2 * h)
        assert gmu[idx] == pytest.approx(fd, rel=1e-6, abs=1e-9)
    fd = (loss(L, mu, w + h * np.eye(E)[1]) - loss(L, mu, w - h * np.eye(E)[1])) / (2 * h)
    assert gw[1] == pytest.approx(fd, rel=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_taichi_autodiff_and_analytic_backward_agree(dtype):
    rng = np.random.default_rng(5)
    L = rng.uniform(0, 30, (4, 17, 13)).astype(dtype)
    mu = rng.uniform(0.005, 0.08, (4, 23)).astype(dtype)
    w = rng.uniform(0.1, 2.0, 23).astype(dtype)
    g = rng.normal(size=(17, 13)).astype(dtype)
    a = beer_lambert_backward(L, mu, w, g, return_weights_grad=True, method="autodiff")
    b = beer_lambert_backward(L, mu, w, g, return_weights_grad=True, method="analytic", chunk=5)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for x, y in zip(a, b):
        assert x.dtype == y.dtype == dtype
        np.testing.assert_allclose(x, y, rtol=tol, atol=tol * np.abs(y).max())


def test_torch_autograd_function():
    rng = np.random.default_rng(3)
    L = torch.tensor(rng.uniform(0, 10, (2, 3, 3)), requires_grad=True)
    mu = torch.tensor(rng.uniform(0.01, 0.1, (2, 4)), requires_grad=True)
    w = torch.tensor(rng.uniform(0.5, 2, 4), requires_grad=True)
    assert torch.autograd.gradcheck(BeerLambertFunction.apply, (L, mu, w), eps=1e-6, atol=1e-7)


def test_bad_inputs():
    L = np.ones((2, 3, 3))
    mu = np.ones((2, 4)) * 0.01
    w = np.ones(4)
    with pytest.raises(ValueError, match="mu must have shape"):
        beer_lambert(L, np.ones((3, 4)), w)
    with pytest.raises(ValueError, match="weights must have shape"):
        beer_lambert(L, mu, np.ones(5))
    with pytest.raises(ValueError, match="L_excl must have shape"):
        beer_lambert(np.ones((3, 3)), mu, w)
    Ln = L.copy()
    Ln[0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="L_excl contain NaN"):
        beer_lambert(Ln, mu, w)
    with pytest.raises(TypeError, match="dtype"):
        beer_lambert(L.astype(np.float32), mu, w)
    with pytest.raises(TypeError):
        beer_lambert(torch.tensor(L), mu, w)
    with pytest.raises(ValueError, match="grad_I must have shape"):
        beer_lambert_backward(L, mu, w, np.ones((2, 2)))
    with pytest.raises(ValueError, match="parents has"):
        exclusive_lengths(L, [-1])
    with pytest.raises(ValueError, match="cycle"):
        exclusive_lengths(L, [1, 0])
    with pytest.raises(ValueError, match="child is longer"):
        exclusive_lengths(np.stack([np.ones((3, 3)), 2 * np.ones((3, 3))]), [-1, 0])
    with pytest.raises(KeyError, match="unknown material"):
        render_intensity(L, [-1, 0], ["water", "kryptonite"], Spectrum.monochromatic(60.0))
    with pytest.raises(ValueError, match="materials for"):
        render_intensity(L, [-1, 0], ["water"], Spectrum.monochromatic(60.0))
    with pytest.raises(ValueError, match="outside"):
        render_intensity(L[:1], [-1], ["water"], Spectrum.monochromatic(900.0))


def test_poisson_noise_seeded():
    T = np.full((50, 60), 0.25)
    a = add_poisson_noise(T, 1e4, seed=7)
    b = add_poisson_noise(T, 1e4, seed=7)
    c = add_poisson_noise(T, 1e4, seed=8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.mean() == pytest.approx(0.25, rel=0.01)
    assert a.std() == pytest.approx(np.sqrt(0.25 / 1e4), rel=0.05)  # Poisson: var = N T / N0^2
    t = add_poisson_noise(torch.tensor(T, dtype=torch.float32), 1e4, seed=7)
    assert t.dtype == torch.float32 and np.allclose(t.numpy(), a, rtol=1e-6)
    with pytest.raises(ValueError):
        add_poisson_noise(-T, 1e4, seed=0)
    with pytest.raises(ValueError):
        add_poisson_noise(T, 0, seed=0)
