"""Source (focal spot, heel effect, fluence) and detector (MTF, noise, readout) models.

References written here: geometric penumbra f (SDD - SOD) / SOD; an ISO 12233 / IEC 62220-1
slanted-edge MTF measurement; a numpy Monte Carlo of the compound Poisson signal with a gamma
gain spread (Swank factor); variances of binned correlated noise from the kernel's
autocorrelation; SpekPy 2.5.4 numbers (Poludniowski et al., Med. Phys. 48, 3630, 2021) and the
abstract values of Samei, Med. Phys. 30, 1747 (2003).
"""
import math
import warnings

import numpy as np
import pytest
import torch

import taichi_xray as tx
from taichi_xray.physics import Detector, Spectrum, get_material
from taichi_xray.physics import detector_model as dm
from taichi_xray.physics import source as src


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
def box(lo, hi):
    (x0, y0, z0), (x1, y1, z1) = lo, hi
    V = np.array([[x0, y0, z0], [x1, y0, z0], [x1, y1, z0], [x0, y1, z0],
                  [x0, y0, z1], [x1, y0, z1], [x1, y1, z1], [x0, y1, z1]], dtype=np.float64)
    F = np.array([[0, 2, 1], [0, 3, 2], [4, 5, 6], [4, 6, 7], [0, 1, 5], [0, 5, 4],
                  [1, 2, 6], [1, 6, 5], [2, 3, 7], [2, 7, 6], [3, 0, 4], [3, 4, 7]])
    return V, F


def axis_camera(sdd, width, height, pitch):
    """Source at the origin looking along +z; principal point at the detector centre."""
    f = sdd / pitch
    K = np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1.0]])
    return tx.Camera.from_intrinsics(K, np.eye(3), np.zeros(3), width, height, pitch)


def slanted_edge_mtf(img, pitch, oversample=4, half_width_px=40):
    """ISO 12233 / IEC 62220-1 slanted-edge MTF of an edge running roughly along the columns.

    Per row: centroid of the derivative -> least-squares edge line; pixel distances to the line
    binned at pitch/oversample -> ESF; central difference -> LSF; |FFT| normalised at 0, divided
    by the transfer of the binning (sinc) and of the central difference.
    """
    H, W = img.shape
    d = np.abs(np.diff(img, axis=1))
    cols = np.arange(W - 1) + 0.5
    cent = (d * cols).sum(1) / d.sum(1)
    rows = np.arange(H)
    a, b = np.polyfit(rows, cent, 1)
    cphi = 1.0 / math.sqrt(1 + a * a)
    rr, cc = np.mgrid[0:H, 0:W]
    dist = (cc - (a * rr + b)) * cphi  # pixels, along the edge normal
    keep = np.abs(dist) < half_width_px
    dx = 1.0 / oversample
    idx = np.floor(dist[keep] / dx).astype(int)
    idx -= idx.min()
    cnt = np.bincount(idx)
    esf = np.bincount(idx, weights=img[keep]) / np.maximum(cnt, 1)
    assert cnt[1:-1].min() > 0, "empty ESF bins: slant too small"
    lsf = np.gradient(esf, dx * pitch)
    n = lsf.size
    f = np.fft.rfftfreq(n, dx * pitch)
    m = np.abs(np.fft.rfft(lsf))
    m /= m[0]
    m /= np.sinc(f * dx * pitch) * np.sinc(2 * f * dx * pitch)
    return f, m, math.degrees(math.atan(a))


def crossing(f, m, level=0.5):
    i = int(np.argmax(m < level))
    return f[i - 1] + (m[i - 1] - level) * (f[i] - f[i - 1]) / (m[i - 1] - m[i])


# ------------------------------------------------------------------------------------------
# geometry: shifted cameras and focal-spot samples
# ------------------------------------------------------------------------------------------
def test_shifted_camera_keeps_detector_and_pixels():
    cam = tx.Camera.c_arm(sid=700, sdd=1100, width=40, height=30, pixel_spacing=0.4, lao=25, cran=-15)
    same = src.shifted_camera(cam, [0, 0, 0])
    np.testing.assert_allclose(same.P, cam.P, atol=1e-9 * np.abs(cam.P).max())
    off = np.array([1.5, -2.0, 3.0])
    c2 = src.shifted_camera(cam, off)
    np.testing.assert_allclose(c2.source, cam.source + off, atol=1e-9)
    origin, du, dv = src.detector_frame(cam)
    uv = np.array([[0, 0], [39, 29], [12.3, 7.9]])
    X = origin + uv[:, :1] * du + uv[:, 1:] * dv
    for c in (cam, c2):
        got, w = c.project(X)
        np.testing.assert_allclose(got, uv, atol=1e-8)
    # detector distance shrinks by the offset's component along the axis; pixels keep their size
    assert c2.detector_distance == pytest.approx(cam.detector_distance - off @ cam.view_direction, rel=1e-10)
    assert c2.pixel_spacing == cam.pixel_spacing
    with pytest.raises(ValueError, match="pixel_spacing"):
        src.shifted_camera(tx.Camera.from_projection_matrix(cam.P, 40, 30), off)
    with pytest.raises(ValueError, match="through the detector"):
        src.shifted_camera(cam, 2000 * cam.view_direction)


def test_focal_spot_samples_moments_and_target_plane():
    cam = axis_camera(1000, 8, 8, 0.5)
    theta = 12.0
    spot = src.FocalSpot(1.2, 0.8, "uniform", theta).oriented(cam, anode="top")
    w, a, d = spot.axes()
    np.testing.assert_allclose(a, [0, -1, 0], atol=1e-12)  # image rows grow along +y: "top" is -y
    off, wt = spot.samples((6, 4))
    assert off.shape == (24, 3) and wt.sum() == pytest.approx(1.0)
    xw, xa, xd = off @ w, off @ a, off @ d
    # midpoint rule: variance of n midpoints over [-s/2, s/2] is s^2 (1 - 1/n^2) / 12
    assert (wt * xw ** 2).sum() == pytest.approx(1.2 ** 2 * (1 - 1 / 36) / 12, rel=1e-12)
    assert (wt * xa ** 2).sum() == pytest.approx(0.8 ** 2 * (1 - 1 / 16) / 12, rel=1e-12)
    # points lie on the target face: toward the anode = further along the central ray
    np.testing.assert_allclose(xd, xa / math.tan(math.radians(theta)), atol=1e-12)
    # Gauss-Hermite: exact second moments of a Gaussian of the given FWHM
    g = src.FocalSpot(0.6, 0.9, "gaussian", theta).oriented(cam, "left")
    gw, ga, _ = g.axes()
    o, q = g.samples(25)
    s = 1 / (2 * math.sqrt(2 * math.log(2)))
    assert (q * (o @ gw) ** 2).sum() == pytest.approx((0.6 * s) ** 2, rel=1e-12)
    assert (q * (o @ ga) ** 2).sum() == pytest.approx((0.9 * s) ** 2, rel=1e-12)
    # seeded samples are reproducible, their moments close to the shape's
    o1, q1 = g.samples(4000, seed=7)
    o2, _ = g.samples(4000, seed=7)
    np.testing.assert_array_equal(o1, o2)
    assert (q1 * (o1 @ gw) ** 2).sum() == pytest.approx((0.6 * s) ** 2, rel=0.1)
    # a 2-D map: zero cells are never sampled
    m = src.FocalSpot(1.0, 1.0, np.array([[0.0, 1.0], [0.0, 1.0]])).oriented(cam)
    om, _ = m.samples(16)
    assert len(om) == 8 and np.all(om @ m.axes()[0] > 0)
    with pytest.raises(ValueError, match="square"):
        spot.samples(10)
    with pytest.raises(ValueError, match="orientation"):
        src.FocalSpot(1.0, 1.0).samples(4)


@pytest.mark.parametrize("sod", [500.0, 800.0])
def test_focal_spot_penumbra_matches_geometry(sod):
    """Edge of an opaque plate rendered from 48 x 3 sub-sources: penumbra = f (SDD - SOD) / SOD."""
    sdd, pitch, f = 1000.0, 0.01, 1.0
    cam = axis_camera(sdd, 400, 4, pitch)
    V, F = box((0.0, -50.0, sod - 0.05), (100.0, 50.0, sod + 0.05))  # edge at x = 0 on the axis
    spot = src.FocalSpot(f, 1.4, "uniform", 12.0).oriented(cam, anode="top")  # width along the columns
    off, wt = spot.samples((48, 3))
    cams = [src.shifted_camera(cam, o) for o in off]
    L = tx.path_length(tx.Mesh(V, F), cams)  # (n, H, W)
    T = np.einsum("n,nhw->hw", wt, np.exp(-100.0 * L.astype(np.float64)))
    prof = T.mean(0)
    lsf = np.clip(prof[:-1] - prof[1:], 0, None)  # dT falls from 1 (open) to 0 (plate)
    x = (np.arange(lsf.size) + 0.5) * pitch
    mu = (lsf * x).sum() / lsf.sum()
    var = (lsf * (x - mu) ** 2).sum() / lsf.sum()
    n = 48  # a uniform spot of n midpoints: var = p^2 (1 - 1/n^2) / 12 on the detector
    measured = math.sqrt(12 * var / (1 - 1 / n ** 2))
    predicted = src.penumbra_width(f, sod, sdd)
    assert spot.penumbra(sod, sdd)[0] == predicted
    assert measured == pytest.approx(predicted, rel=0.02)


# ------------------------------------------------------------------------------------------
# heel effect and fluence
# ------------------------------------------------------------------------------------------
# SpekPy 2.5.4 (casim, obli=False), 80 kVp, 12 deg anode: spectrum at an emission angle psi
# toward the anode over the central-ray spectrum, at 40.5 and 60.5 keV (1 keV bins).
SPEKPY_HEEL_80KVP_12DEG = {  # psi (deg): (ratio at 40.5 keV, ratio at 60.5 keV)
    -8.0: (1.0444, 1.0121),
    4.0: (0.9481, 0.9851),
    8.0: (0.8149, 0.9421),
}


def test_heel_factors_match_spekpy_table():
    e = np.array([40.5, 60.5])
    for psi, ref in SPEKPY_HEEL_80KVP_12DEG.items():
        h = src.heel_factors(e, 80.0, 12.0, [psi])[0]
        np.testing.assert_allclose(h, ref, rtol=0.03)


def test_heel_intensity_falls_and_hardens_toward_anode():
    spec = Spectrum.tungsten(80)
    psi = np.linspace(-10, 10, 21)
    h = src.heel_factors(spec.energies, 80.0, 12.0, psi)
    I = h @ spec.photons / spec.photons.sum()
    Emean = (h * spec.photons * spec.energies).sum(1) / (h * spec.photons).sum(1)
    assert np.all(np.diff(I) < 0) and np.all(np.diff(Emean) > 0)
    assert I[10] == pytest.approx(1.0, abs=1e-12)
    # a steeper anode has a weaker heel
    h16 = src.heel_factors(spec.energies, 80.0, 16.0, [8.0])[0] @ spec.photons
    assert h16 > h[18] @ spec.photons
    # the escape fraction against an independent quadrature of its integral
    from scipy.integrate import quad

    E, T0, alpha, k = 50.0, 80.0, 7.0, 0.5
    mu = get_material("tungsten").mu([E])[0] * 10
    rhoC = 19.3 * np.interp(T0, [75, 100], [6.25e5, 7.0e5])
    ref = quad(lambda T: math.exp(-mu * k * (T0 ** 2 - T ** 2) / (rhoC * math.sin(math.radians(alpha)))),
               E, T0)[0] / (T0 - E)
    assert src.target_escape_fraction([E], T0, alpha, depth_scale=k)[0] == pytest.approx(ref, rel=1e-9)


def test_heel_weights_per_row_and_cutoff_warning():
    spec = Spectrum.tungsten(90)
    cam = tx.Camera.c_arm(sid=600, sdd=1000, width=16, height=200, pixel_spacing=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h = src.heel_weights(spec, cam, 12.0, anode="top")
    assert h.shape == (200, spec.energies.size)
    I = h @ spec.photons
    assert np.all(np.diff(I) > 0)  # the top (anode side) is darker
    psi = src.heel_angles(cam, "top")
    assert psi[0] == pytest.approx(math.degrees(math.atan(99.5 / 1000)), rel=1e-9)
    hb = src.heel_weights(spec, cam, 12.0, anode="bottom")
    np.testing.assert_allclose(hb, h[::-1], rtol=1e-12)
    hc = src.heel_weights(spec, tx.Camera.c_arm(sid=600, sdd=1000, width=200, height=4, pixel_spacing=1.0),
                          12.0, anode="left")
    assert hc.shape == (200, spec.energies.size)
    wide = tx.Camera.c_arm(sid=600, sdd=1000, width=4, height=600, pixel_spacing=1.0)  # +-16.7 deg
    with pytest.warns(src.HeelCutoffWarning):
        hw = src.heel_weights(spec, wide, 12.0, anode="top")
    assert np.all(hw[0] == 0) and np.all(hw[-1] > 0)


def test_photons_per_pixel_inverse_square_and_tasmip_absolute_scale():
    tas = Spectrum.tungsten(80, filtration={})  # raw TASMIP: about 2.5 mm Al total filtration
    n1 = src.photons_per_pixel(tas, 2.0, 1000.0, 0.25)
    n2 = src.photons_per_pixel(tas, 2.0, 1500.0, 0.25)
    np.testing.assert_allclose(n2, n1 / 1.5 ** 2, rtol=1e-12)
    np.testing.assert_allclose(n1, tas.photons * 2.0 * 0.25, rtol=1e-12)
    # SpekPy 2.5.4: 80 kVp, 12 deg, 2.5 mm Al total -> 1.524e6 photons / mm^2 / mAs at 1 m
    assert src.photons_per_pixel(tas, 1.0, 1000.0, 1.0).sum() == pytest.approx(1.524e6, rel=0.10)
    cam = tx.Camera.c_arm(sid=600, sdd=1000, width=64, height=48, pixel_spacing=2.0)
    ff = src.fluence_falloff(cam)
    r = cam.ray_lengths()
    np.testing.assert_allclose(ff, (1000.0 / r) ** 3, rtol=1e-12)
    assert ff.max() <= 1.0
    with pytest.raises(ValueError, match="mAs"):
        src.photons_per_pixel(tas, -1, 1000, 1)


def test_spekpy_spectrum_and_heel_model_against_spekpy():
    sp = pytest.importorskip("spekpy")
    s = src.spekpy_spectrum(80, 12.0, {"Al": 2.5})
    ref = sp.Spek(kvp=80, th=12, dk=1)
    ref.filter("Al", 2.5)
    assert s.photons.sum() == pytest.approx(ref.get_flu() / 100.0, rel=0.02)  # per cm^2 -> per mm^2
    assert s.mean_energy() == pytest.approx(ref.get_emean(), rel=0.005)
    # TASMIP's absolute fluence within 10 % of SpekPy's
    assert Spectrum.tungsten(80, filtration={}).photons.sum() == pytest.approx(s.photons.sum(), rel=0.10)
    # the dependency-free heel model against SpekPy: fluence within 3 %, mean energy within 1.5 keV
    base = sp.Spek(kvp=100, th=16, dk=1, obli=False)
    k0, p0 = base.get_spectrum(diff=False)
    al = np.exp(-get_material("Al").mu(np.maximum(k0, 1.0)) * 2.5)
    p0 = p0 * al
    for psi in (-10.0, 6.0, 12.0):
        xcm = -100 * math.tan(math.radians(psi))
        _, p = base.get_spectrum(diff=False, x=xcm, z=100.0)
        p = p * al * (1 + (xcm / 100) ** 2)
        h = src.heel_factors(k0, 100.0, 16.0, [psi])[0]
        assert (p0 * h).sum() == pytest.approx(p.sum(), rel=0.03)
        assert (k0 * p0 * h).sum() / (p0 * h).sum() == pytest.approx((k0 * p).sum() / p.sum(), abs=1.5)
        hs = src.heel_factors(k0[k0 > 1], 100.0, 16.0, [psi], model="spekpy")[0]
        assert (p0[k0 > 1] * hs).sum() == pytest.approx(p.sum(), rel=1e-3)


# ------------------------------------------------------------------------------------------
# MTF
# ------------------------------------------------------------------------------------------
def test_mtf_presets_reproduce_published_values():
    csi, gos = dm.MTF.preset("csi"), dm.MTF.preset("GOS")
    for m in (csi, gos):  # Samei 2003: MTF 0.2 at ~2.5 / mm and 0.1 at ~3.8 / mm for both panels
        assert m(2.5) == pytest.approx(0.2, rel=0.02)
        assert m(3.8) == pytest.approx(0.1, rel=0.02)
        assert m(0.0) == pytest.approx(1.0)
    f = np.linspace(0, 2, 2001)[1:]
    assert (csi(f) - gos(f)).mean() == pytest.approx(0.07, abs=0.005)  # CsI 0.07 higher below 2 / mm
    m = dm.MTF.from_points({1: 0.6, 2: 0.3})
    np.testing.assert_allclose(m([1, 2]), [0.6, 0.3], rtol=1e-10)
    assert dm.MTF.from_points({1.5: 0.4})(1.5) == pytest.approx(0.4, rel=1e-10)
    g = dm.MTF.gaussian(0.1)
    assert g.mtf50() == pytest.approx(math.sqrt(math.log(2) / (2 * math.pi ** 2)) / 0.1, rel=1e-9)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        dm.MTF.from_points({1: 1.2})
    with pytest.raises(KeyError, match="unknown MTF preset"):
        dm.MTF.preset("selenium")


@pytest.mark.parametrize("mtf", [dm.MTF.preset("csi"), dm.MTF.from_points({1: 0.6, 2: 0.3})],
                         ids=["csi_preset", "points"])
def test_slanted_edge_mtf_of_rendered_edge(mtf):
    pitch, n = 0.127, 160
    cam = axis_camera(1000.0, n, n, pitch)
    V, F = box((0.0, -100.0, 995.0), (100.0, 100.0, 995.1))
    ang = math.radians(3.0)
    R = np.array([[math.cos(ang), -math.sin(ang), 0], [math.sin(ang), math.cos(ang), 0], [0, 0, 1]])
    L = tx.path_length(tx.Mesh(V @ R.T, F), cam).astype(np.float64)
    T = np.exp(-100.0 * L)
    f, m_ideal, angle = slanted_edge_mtf(T, pitch)
    assert abs(angle) == pytest.approx(3.0, abs=0.2)
    nyq = 0.5 / pitch
    assert m_ideal[f <= nyq].min() > 0.97  # a point-sampled sharp edge: MTF 1 up to Nyquist
    blurred = mtf.apply(T, pitch)
    f, m, _ = slanted_edge_mtf(blurred, pitch)
    assert crossing(f, m) == pytest.approx(mtf.mtf50(), rel=0.05)
    sel = f <= nyq
    np.testing.assert_allclose(m[sel], mtf(f[sel]), atol=0.03)
    # torch path: differentiable, same numbers
    x = torch.tensor(T, requires_grad=True)
    y = mtf.apply(x, pitch)
    np.testing.assert_allclose(y.detach().numpy(), blurred, atol=1e-12)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


# ------------------------------------------------------------------------------------------
# noise
# ------------------------------------------------------------------------------------------
def _flat_sums(kvp=70, mAs=1.0, pitch=0.127):
    spec = Spectrum.tungsten(kvp)
    det = Detector("energy", ("CsI", 0.6))
    N = src.photons_per_pixel(spec, mAs, 1000.0, pitch ** 2)
    w = dm.signal_weights(N, spec.energies, det)
    return spec, det, N, w[0].sum(), w[1].sum()


def test_compound_poisson_variance_with_swank_against_monte_carlo():
    spec, det, N, S1, S2 = _flat_sums(mAs=0.05)
    I = 0.8
    # independent reference: per-energy Poisson counts of absorbed photons, each with a gamma
    # distributed signal of mean E and variance E^2 (1/I - 1) (the Swank factor's definition)
    rng = np.random.default_rng(5)
    eta = det.efficiency(spec.energies)
    k = I / (1 - I)
    npx = 20000
    n = rng.poisson(N * eta, size=(npx, N.size))
    sig = np.where(n > 0, rng.gamma(np.maximum(n * k, 1e-12), spec.energies / k), 0.0).sum(1)
    assert sig.mean() == pytest.approx(S1, rel=0.005)
    assert sig.var() == pytest.approx(S2 / I, rel=0.03)
    # the detector model, both samplers, at two exposures: variance = gain^2 S2 / I, linear in mAs
    for scale in (1.0, 4.0):
        dmod = dm.DetectorModel(pixel_pitch_mm=0.127, swank=I, gain=0.02, offset=100.0)
        s1 = torch.full((256, 256), S1 * scale, dtype=torch.float64)
        s2 = torch.full((256, 256), S2 * scale, dtype=torch.float64)
        for method in ("gaussian", "poisson"):
            y = dmod(s1, s2, seed=3, method=method)
            assert float(y.mean()) == pytest.approx(0.02 * S1 * scale + 100.0, rel=2e-3)
            assert float(y.var()) == pytest.approx(0.02 ** 2 * S2 * scale / I, rel=0.03)


def _radial(nps, pitch, nbins=8):
    H, W2 = nps.shape
    W = (W2 - 1) * 2
    fy = np.fft.fftfreq(H, pitch)[:, None]
    fx = np.fft.rfftfreq(W, pitch)[None, :]
    fr = np.sqrt(fx ** 2 + fy ** 2)
    edges = np.linspace(0, 0.5 / pitch, nbins + 1)
    return np.array([nps[(fr >= a) & (fr < b)].mean() for a, b in zip(edges[:-1], edges[1:])])


def _expected_periodogram(nps_big, n):
    """E |DFT(roi)|^2 / n^2 of an n x n ROI of a stationary field with the NPS ``nps_big`` (rfft2 grid
    of a large N x N image): sum over lags of the autocovariance times the triangle (n-|dx|)(n-|dy|)/n^2."""
    N = (nps_big.shape[1] - 1) * 2
    C = np.fft.irfft2(nps_big, s=(N, N))  # autocovariance at periodic lags
    lag = np.arange(-(n - 1), n)
    tri = (n - np.abs(lag)) / n
    A = np.zeros((2 * n, 2 * n))
    A[np.ix_(lag % (2 * n), lag % (2 * n))] = C[np.ix_(lag % N, lag % N)] * np.outer(tri, tri)
    return np.real(np.fft.rfft2(A))[::2, ::2]


@pytest.mark.parametrize("sigma_e", [0.0, 3.0])
def test_noise_power_spectrum_is_mtf_squared_plus_white(sigma_e):
    """Noise before the blur: NPS = gain^2 (S2/I) |MTF|^2 + sigma_e^2 (electronic noise after it)."""
    pitch, roi = 0.127, 32
    mtf = dm.MTF.preset("csi")
    det = dm.DetectorModel(pixel_pitch_mm=pitch, mtf=mtf, swank=0.9, gain=0.05, electronic_noise=sigma_e)
    S1, S2 = 2.0e5, 1.0e7
    s1 = torch.full((8, 192, 192), S1, dtype=torch.float64)
    y = det(s1, torch.full_like(s1, S2), seed=11).numpy()
    core = y[:, 32:160, 32:160]  # away from the padded borders
    rois = core.reshape(8, 4, roi, 4, roi).transpose(0, 1, 3, 2, 4).reshape(-1, roi, roi)
    rois = rois - rois.mean(axis=(1, 2), keepdims=True)
    nps = (np.abs(np.fft.rfft2(rois)) ** 2).mean(0) / (roi * roi)
    # the model's NPS, written out here: white quantum level times |MTF|^2, plus the white readout level
    N = 256
    fr = np.hypot(np.fft.fftfreq(N, pitch)[:, None], np.fft.rfftfreq(N, pitch)[None, :])
    ref_big = 0.05 ** 2 * S2 / 0.9 * mtf(fr) ** 2 + sigma_e ** 2
    np.testing.assert_allclose(det.noise_power_spectrum(N, N, S2), ref_big, rtol=1e-10)
    expected = _expected_periodogram(ref_big, roi)
    np.testing.assert_allclose(_radial(nps, pitch)[1:], _radial(expected, pitch)[1:], rtol=0.05)
    # the variance is the NPS's mean over the full frequency grid
    var_pred = (2 * ref_big.sum() - ref_big[:, 0].sum() - ref_big[:, -1].sum()) / N ** 2
    assert core.var() == pytest.approx(var_pred, rel=0.03)


def test_binning_conserves_mean_and_reduces_variance():
    pitch = 0.1
    mtf = dm.MTF.gaussian(0.12)
    # white electronic noise: variance / k^2
    white = dm.DetectorModel(pixel_pitch_mm=pitch, electronic_noise=4.0, gain=1.0, binning=2)
    s1 = torch.full((4, 128, 128), 1.0e4, dtype=torch.float64)
    zero = torch.zeros_like(s1)
    y = white(s1, zero, seed=1)
    assert y.shape == (4, 64, 64)
    assert float(y.mean()) == pytest.approx(1.0e4, rel=1e-4)
    assert float(y.var()) == pytest.approx(16.0 / 4, rel=0.04)
    # blurred quantum noise: the binned variance from the kernel's autocorrelation
    for k in (2, 4):
        det = dm.DetectorModel(pixel_pitch_mm=pitch, mtf=mtf, gain=1.0, binning=k)
        yb = det(s1, s1, seed=2).numpy()[:, 2:-2, 2:-2]
        nps = det.noise_power_spectrum(256, 256, 1.0e4)  # flat-field NPS of native pixels
        fy = np.fft.fftfreq(256)[:, None]
        fx = np.fft.rfftfreq(256)[None, :]
        box_tf = np.abs(np.exp(-2j * np.pi * np.arange(k)[:, None, None] * fy[None]).sum(0) / k) ** 2 * \
            np.abs(np.exp(-2j * np.pi * np.arange(k)[:, None, None] * fx[None]).sum(0) / k) ** 2
        full = nps * box_tf
        var_pred = (2 * full.sum() - full[:, 0].sum() - full[:, -1].sum()) / 256 ** 2
        assert yb.var() == pytest.approx(var_pred, rel=0.05)
        var_native = (2 * nps.sum() - nps[:, 0].sum() - nps[:, -1].sum()) / 256 ** 2
        assert var_native / k ** 2 < var_pred < var_native  # correlated noise: reduced by less than k^2
        np.testing.assert_allclose(det.expected(s1).numpy(), 1.0e4, rtol=1e-10)
    x = torch.arange(36.0).reshape(6, 6)
    np.testing.assert_allclose(dm.bin_image(x, 3, mode="sum").sum(), x.sum())
    with pytest.raises(ValueError, match="multiple"):
        dm.bin_image(torch.ones(5, 6), 2)
    assert dm.bin_image(torch.ones(5, 6), 2, crop=True).shape == (2, 3)


def test_quantisation_and_saturation():
    det = dm.DetectorModel(pixel_pitch_mm=0.2, gain=1.0, offset=10.0, bits=8)
    s1 = torch.tensor([[0.0, 100.3, 244.6, 1000.0]], dtype=torch.float64, requires_grad=True)
    y = det(s1, torch.zeros(1, 4, dtype=torch.float64), seed=0)
    np.testing.assert_array_equal(y.detach().numpy(), [[10.0, 110.0, 255.0, 255.0]])
    y.sum().backward()
    np.testing.assert_array_equal(s1.grad.numpy(), [[1.0, 1.0, 1.0, 0.0]])  # straight-through; 0 when clipped
    q = dm.quantize(np.array([-3.2, 0.4, 4095.6, 5000.0]), 12)
    np.testing.assert_array_equal(q, [0.0, 0.0, 4095.0, 4095.0])
    with pytest.warns(RuntimeWarning, match="saturated"):
        det(torch.full((2, 2), 1e6, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64), seed=0)
    with pytest.raises(ValueError, match="bits"):
        dm.quantize(np.ones(3), 0)


def test_photon_counting_bins_sum_to_total_counts():
    spec = Spectrum.tungsten(90)
    det = Detector("counting", ("CsI", 0.6))
    N = src.photons_per_pixel(spec, 0.02, 1000.0, 0.1 ** 2)
    eta = det.efficiency(spec.energies)
    pcd = dm.PhotonCountingModel(pixel_pitch_mm=0.1, thresholds_keV=(20, 35, 50, 65), energy_fwhm_keV=6.0)
    Wb = pcd.weights(N, spec.energies, eta)  # (4, E)
    total = dm.counting_bin_weights(spec.energies, [20.0], N, eta, energy_fwhm_keV=6.0)[0]
    np.testing.assert_allclose(Wb.sum(0), total, rtol=1e-12)
    ideal = dm.counting_bin_weights(spec.energies, [20.0, 35.0])
    np.testing.assert_array_equal(ideal.sum(0), (spec.energies >= 20).astype(float))
    lam = torch.tensor(Wb.sum(1), dtype=torch.float64)[:, None, None].expand(4, 128, 128).contiguous()
    c = pcd(lam, seed=4)
    assert torch.equal(c, torch.round(c))  # integer counts
    tot = c.sum(0)
    assert float(tot.mean()) == pytest.approx(total.sum(), rel=0.01)
    assert float(tot.var()) == pytest.approx(total.sum(), rel=0.04)  # a sum of Poisson bins is Poisson
    binned = dm.PhotonCountingModel(pixel_pitch_mm=0.1, thresholds_keV=(20, 35, 50, 65), binning=2)(lam, seed=4)
    assert binned.shape == (4, 64, 64)
    assert float(binned.sum(0).mean()) == pytest.approx(4 * total.sum(), rel=0.01)


def test_reparameterised_noise_moments_gradients_and_seeds():
    m = torch.full((200, 200), 50.0, dtype=torch.float64, requires_grad=True)
    v = torch.full((200, 200), 9.0, dtype=torch.float64, requires_grad=True)
    y = dm.gaussian_noise(m, v, seed=8)
    assert float(y.detach().mean()) == pytest.approx(50.0, abs=0.05)
    assert float(y.detach().var()) == pytest.approx(9.0, rel=0.02)
    y.sum().backward()
    eps = (y - m) / 3.0
    np.testing.assert_allclose(m.grad.numpy(), 1.0)
    np.testing.assert_allclose(v.grad.numpy(), (eps / (2 * 3.0)).detach().numpy(), rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(dm.gaussian_noise(m, v, seed=8), y)
    assert not torch.equal(dm.gaussian_noise(m, v, seed=9), y)
    # the full model is differentiable in float64 (fixed seed = fixed epsilon)
    det = dm.DetectorModel(pixel_pitch_mm=0.2, mtf=dm.MTF.gaussian(0.15), swank=0.8, gain=0.3,
                           electronic_noise=0.5, binning=2)
    s1 = (torch.rand(6, 8, dtype=torch.float64) * 100 + 50).requires_grad_(True)
    s2 = (torch.rand(6, 8, dtype=torch.float64) * 1000 + 500).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: det(a, b, seed=5), (s1, s2))
    p = dm.poisson_noise(np.full((100, 100), 7.0), seed=1)
    assert isinstance(p, np.ndarray) and p.mean() == pytest.approx(7.0, rel=0.03)
    np.testing.assert_array_equal(p, dm.poisson_noise(np.full((100, 100), 7.0), seed=1))
    with pytest.raises(ValueError, match="seed"):
        dm.gaussian_noise(m, v)
    with pytest.raises(ValueError, match=">= 0"):
        det(-s1.detach(), s2.detach(), seed=0)
    with pytest.raises(ValueError, match="same shape"):
        det(s1.detach(), s2.detach()[:, :4], seed=0)
