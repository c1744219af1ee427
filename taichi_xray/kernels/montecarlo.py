"""Taichi kernels of the Monte Carlo photon-transport reference (not differentiated).

One thread follows one photon history from the source until it is absorbed or
leaves the scene; the per-photon outcome is written to arrays (no atomics, no
shared tallies), and :mod:`taichi_xray.physics.montecarlo` tallies them in
numpy in a fixed order. Histories are therefore bitwise reproducible: photon
``g`` (its global index) draws from its own random stream, a xoshiro128**
generator (Blackman & Vigna 2018) seeded by hashing ``(seed, g)`` with the
murmur3 32-bit finaliser, whatever the thread schedule and batch size.

Physics (photon energies 1..800 keV, no electron transport, no fluorescence):

* free paths ``-ln(r) / mu_tot(E, m)`` with ``mu_tot = mu_photo + mu_compton +
  mu_rayleigh`` interpolated linearly on a uniform energy grid (tables built by
  the Python front from xraylib ``CS_Photo``, ``CS_Compt``, ``CS_Rayl``);
* photoelectric absorption: the photon's energy is deposited locally (the
  fluorescence photons, at most 4 keV for calcium in tissue, are neglected);
* Compton: cos(theta) from Klein-Nishina times the incoherent scattering
  function, by rejection: cos uniform, accepted with probability
  ``KN(cos) / KN(1) * S_mix(q) / Z_mix`` (both factors <= 1), q = E/hc sin(theta/2);
  the scattered energy is the free-electron (Compton) value, no Doppler
  broadening; ``E - E'`` is deposited locally;
* Rayleigh: q^2 sampled from the tabulated cumulative of the squared form
  factor ``F_mix^2`` (inverse CDF with a binary search), accepted with
  ``(1 + cos^2) / 2`` (the Thomson factor), as in PENELOPE and EGS;
* photons below ``e_cut`` keV are absorbed on the spot.

Geometry: up to a few convex primitives (``prims`` rows, see
:data:`PRIM_WIDTH`): boxes (slabs are boxes with +-1e30 lateral extents),
cylinders with their axis along x, y or z, spheres. A point's material is the
material of the *last* primitive that contains it (painter's order), so later
primitives carve inserts into earlier ones; outside all primitives is vacuum.
Boundaries are crossed exactly (the next crossing is the nearest entry/exit of
any primitive ahead), with a nudge of ``eps`` mm past each surface.

All kernels take a ``real`` template (``ti.f32`` or ``ti.f64``): positions,
directions, energies and the random numbers are computed in that precision.
"""
import taichi as ti

PRIM_WIDTH = 10  # (type, axis/unused, p0..p7): see _intersect
BIG = 1e29
MAX_TRIES = 1000  # rejection loops (acceptance is >= ~1/5 everywhere in 1..800 keV)
HC_KEV_A = 12.398419843320026  # h c in keV * Angstrom (xraylib's MomentTransf uses 12.39842)
ME_KEV = 510.99895


# ----------------------------------------------------------------------------------------
# random numbers
# ----------------------------------------------------------------------------------------
@ti.func
def _fmix32(h):
    h ^= h >> ti.u32(16)
    h *= ti.u32(0x85EBCA6B)
    h ^= h >> ti.u32(13)
    h *= ti.u32(0xC2B2AE35)
    h ^= h >> ti.u32(16)
    return h


@ti.func
def _rotl(x, k: ti.template()):
    return (x << ti.u32(k)) | (x >> ti.u32(32 - k))


@ti.func
def rng_seed(seed, lo, hi):
    """State (4 x u32) of the stream of photon (hi * 2^32 + lo) under ``seed``."""
    a = _fmix32(seed ^ ti.u32(0x9E3779B9))
    b = _fmix32(lo + a)
    c = _fmix32(hi ^ _fmix32(b + ti.u32(0x632BE5AB)))
    s = ti.Vector([_fmix32(b ^ ti.u32(0x243F6A88)), _fmix32(c ^ ti.u32(0x85A308D3)),
                   _fmix32(b + c + ti.u32(0x13198A2E)), _fmix32(a ^ c ^ ti.u32(0x03707344))], dt=ti.u32)
    if s[0] == 0 and s[1] == 0 and s[2] == 0 and s[3] == 0:
        s[0] = ti.u32(1)
    return s


@ti.func
def _next(s):
    r = _rotl(s[1] * ti.u32(5), 7) * ti.u32(9)
    t = s[1] << ti.u32(9)
    s[2] ^= s[0]
    s[3] ^= s[1]
    s[1] ^= s[2]
    s[0] ^= s[3]
    s[2] ^= t
    s[3] = _rotl(s[3], 11)
    return r, s


@ti.func
def uniform(s, real: ti.template()):
    """A uniform number in [0, 1) with 24 (f32) or 53 (f64) random bits, and the new state."""
    a, s = _next(s)
    x = ti.cast(0, real)
    if ti.static(real == ti.f64):
        b, s2 = _next(s)
        s = s2
        x = (ti.cast(a >> ti.u32(5), ti.f64) * 67108864.0 + ti.cast(b >> ti.u32(6), ti.f64)) * (1.0 / 9007199254740992.0)
    else:
        x = ti.cast(a >> ti.u32(8), ti.f32) * (1.0 / 16777216.0)
    return x, s


# ----------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------
@ti.func
def _energy_index(E, egrid: ti.template(), real: ti.template()):
    """(k, frac) of E on the uniform energy grid egrid = (e_lo, de, n)."""
    f = (E - egrid[0]) / egrid[1]
    n = ti.cast(egrid[2], ti.i32)
    k = ti.cast(ti.floor(f), ti.i32)
    k = ti.max(0, ti.min(k, n - 2))
    return k, ti.min(ti.max(f - ti.cast(k, real), ti.cast(0, real)), ti.cast(1, real))


@ti.func
def _q_index(q, qgrid: ti.template(), real: ti.template()):
    """(k, frac) of q on the grid q_k = qtop (k / (n - 1))^2, qgrid = (qtop, n)."""
    n = ti.cast(qgrid[1], ti.i32)
    f = ti.sqrt(ti.max(q, ti.cast(0, real)) / qgrid[0]) * ti.cast(n - 1, real)
    k = ti.cast(ti.floor(f), ti.i32)
    k = ti.max(0, ti.min(k, n - 2))
    return k, ti.min(ti.max(f - ti.cast(k, real), ti.cast(0, real)), ti.cast(1, real))


@ti.func
def sample_compton(E, m, sf: ti.template(), qgrid: ti.template(), s, real: ti.template()):
    """cos(theta) of an incoherent scattering of a photon of E keV in material m.

    sf (M, NQ): S_mix(q) / Z_mix on the q grid. Returns (cos, state)."""
    k = E / ti.cast(ME_KEV, real)
    qfac = E / ti.cast(HC_KEV_A, real)
    cth = ti.cast(1, real)
    for _ in range(MAX_TRIES):
        r1, s1 = uniform(s, real)
        r2, s2 = uniform(s1, real)
        s = s2
        c = 1 - 2 * r1
        p = 1 / (1 + k * (1 - c))
        f = 0.5 * p * p * (p + 1 / p - 1 + c * c)
        q = qfac * ti.sqrt(ti.max(0.5 * (1 - c), ti.cast(0, real)))
        j, fr = _q_index(q, qgrid, real)
        S = sf[m, j] * (1 - fr) + sf[m, j + 1] * fr
        cth = c
        if r2 < f * S:
            break
    return cth, s


@ti.func
def sample_rayleigh(E, m, fcum: ti.template(), qgrid: ti.template(), s, real: ti.template()):
    """cos(theta) of a coherent scattering: q^2 from the cumulative of F_mix^2, Thomson rejection.

    fcum (M, NQ): A(q_k) = int_0^{q_k^2} F_mix^2 d(q^2). Returns (cos, state)."""
    qmax = E / ti.cast(HC_KEV_A, real)
    umax = qmax * qmax
    n = ti.cast(qgrid[1], ti.i32)
    jm, frm = _q_index(qmax, qgrid, real)
    amax = fcum[m, jm] * (1 - frm) + fcum[m, jm + 1] * frm
    cth = ti.cast(1, real)
    for _ in range(MAX_TRIES):
        r1, s1 = uniform(s, real)
        r2, s2 = uniform(s1, real)
        s = s2
        target = r1 * amax
        lo = 0
        hi = jm + 1  # fcum[m, lo] <= target < fcum[m, hi] (or hi is the table's end)
        for _b in range(40):
            if hi - lo > 1:
                mid = (lo + hi) // 2
                if fcum[m, mid] <= target:
                    lo = mid
                else:
                    hi = mid
        hi = ti.min(lo + 1, n - 1)
        ql = qgrid[0] * (ti.cast(lo, real) / ti.cast(n - 1, real)) ** 2
        qh = qgrid[0] * (ti.cast(hi, real) / ti.cast(n - 1, real)) ** 2
        ul = ql * ql
        uh = qh * qh
        da = fcum[m, hi] - fcum[m, lo]
        u = ul
        if da > 0:
            u = ul + (target - fcum[m, lo]) / da * (uh - ul)
        u = ti.min(u, umax)
        c = 1 - 2 * u / umax
        cth = c
        if r2 < 0.5 * (1 + c * c):
            break
    return cth, s


# ----------------------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------------------
@ti.func
def _slab_t(o, d, lo, hi, real: ti.template()):
    """Ray parameters (t0, t1) where o + t d lies between the planes lo and hi of one axis."""
    t0 = ti.cast(-BIG, real)
    t1 = ti.cast(BIG, real)
    if ti.abs(d) < 1e-30:
        if o < lo or o > hi:
            t0 = ti.cast(BIG, real)
            t1 = ti.cast(-BIG, real)
    else:
        a = (lo - o) / d
        b = (hi - o) / d
        t0 = ti.min(a, b)
        t1 = ti.max(a, b)
    return t0, t1


@ti.func
def _intersect(prims: ti.template(), p, pos, dr, real: ti.template()):
    """(t_in, t_out) of the ray pos + t dr with primitive p (t_in > t_out: missed).

    Rows of prims: type 0 box (x0, x1, y0, y1, z0, z1); type 1 cylinder (axis a in
    {0, 1, 2} in column 1; centre of the two other coordinates in the order (x, y, z)
    without a, radius, extent lo, hi along the axis); type 2 sphere (cx, cy, cz, r)."""
    typ = ti.cast(prims[p, 0], ti.i32)
    tn = ti.cast(-BIG, real)
    tf = ti.cast(BIG, real)
    if typ == 0:
        for a in ti.static(range(3)):
            t0, t1 = _slab_t(pos[a], dr[a], prims[p, 2 + 2 * a], prims[p, 3 + 2 * a], real)
            tn = ti.max(tn, t0)
            tf = ti.min(tf, t1)
    elif typ == 1:
        ax = ti.cast(prims[p, 1], ti.i32)
        ib = 0
        ic = 1
        if ax == 0:
            ib = 1
            ic = 2
        elif ax == 1:
            ib = 0
            ic = 2
        ob = pos[ib] - prims[p, 2]
        oc = pos[ic] - prims[p, 3]
        db = dr[ib]
        dc = dr[ic]
        R = prims[p, 4]
        A = db * db + dc * dc
        B = 2 * (ob * db + oc * dc)
        C = ob * ob + oc * oc - R * R
        if A < 1e-30:
            if C > 0:
                tn = ti.cast(BIG, real)
                tf = ti.cast(-BIG, real)
        else:
            disc = B * B - 4 * A * C
            if disc < 0:
                tn = ti.cast(BIG, real)
                tf = ti.cast(-BIG, real)
            else:
                sq = ti.sqrt(disc)
                tn = (-B - sq) / (2 * A)
                tf = (-B + sq) / (2 * A)
        t0, t1 = _slab_t(pos[ax], dr[ax], prims[p, 5], prims[p, 6], real)
        tn = ti.max(tn, t0)
        tf = ti.min(tf, t1)
    else:
        ox = pos[0] - prims[p, 2]
        oy = pos[1] - prims[p, 3]
        oz = pos[2] - prims[p, 4]
        R = prims[p, 5]
        B = ox * dr[0] + oy * dr[1] + oz * dr[2]
        C = ox * ox + oy * oy + oz * oz - R * R
        disc = B * B - C
        if disc < 0:
            tn = ti.cast(BIG, real)
            tf = ti.cast(-BIG, real)
        else:
            sq = ti.sqrt(disc)
            tn = -B - sq
            tf = -B + sq
    return tn, tf


@ti.func
def _inside(prims: ti.template(), p, x, real: ti.template()):
    typ = ti.cast(prims[p, 0], ti.i32)
    res = 1
    if typ == 0:
        for a in ti.static(range(3)):
            if x[a] < prims[p, 2 + 2 * a] or x[a] > prims[p, 3 + 2 * a]:
                res = 0
    elif typ == 1:
        ax = ti.cast(prims[p, 1], ti.i32)
        ib = 0
        ic = 1
        if ax == 0:
            ib = 1
            ic = 2
        elif ax == 1:
            ib = 0
            ic = 2
        ob = x[ib] - prims[p, 2]
        oc = x[ic] - prims[p, 3]
        if ob * ob + oc * oc > prims[p, 4] * prims[p, 4] or x[ax] < prims[p, 5] or x[ax] > prims[p, 6]:
            res = 0
    else:
        ox = x[0] - prims[p, 2]
        oy = x[1] - prims[p, 3]
        oz = x[2] - prims[p, 4]
        if ox * ox + oy * oy + oz * oz > prims[p, 5] * prims[p, 5]:
            res = 0
    return res


@ti.func
def _material(prims: ti.template(), pmat: ti.template(), x, real: ti.template()):
    m = -1
    for p in range(prims.shape[0]):
        if _inside(prims, p, x, real) == 1:
            m = pmat[p]
    return m


@ti.func
def _next_boundary(prims: ti.template(), pos, dr, real: ti.template()):
    """Distance to the nearest surface crossing ahead (BIG if none)."""
    t = ti.cast(BIG, real)
    for p in range(prims.shape[0]):
        tn, tf = _intersect(prims, p, pos, dr, real)
        if tn <= tf:
            if tn > 0:
                t = ti.min(t, tn)
            if tf > 0:
                t = ti.min(t, tf)
    return t


@ti.func
def _rotate(u, v, w, cth, phi, real: ti.template()):
    """Direction after a deflection by theta (cos cth) and azimuth phi."""
    sth = ti.sqrt(ti.max(1 - cth * cth, ti.cast(0, real)))
    cp = ti.cos(phi)
    sp = ti.sin(phi)
    nu = ti.cast(0, real)
    nv = ti.cast(0, real)
    nw = ti.cast(0, real)
    if ti.abs(w) > 0.99999:
        nu = sth * cp
        nv = sth * sp
        nw = cth * ti.select(w > 0, 1.0, -1.0)
    else:
        tmp = ti.sqrt(1 - w * w)
        nu = sth * (u * w * cp - v * sp) / tmp + u * cth
        nv = sth * (v * w * cp + u * sp) / tmp + v * cth
        nw = -sth * cp * tmp + w * cth
    inv = 1 / ti.sqrt(nu * nu + nv * nv + nw * nw)
    return nu * inv, nv * inv, nw * inv


# ----------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------
@ti.kernel
def transport(
    n: ti.i32,  # photons in this launch
    seed: ti.u32,
    base_lo: ti.u32,  # global index of photon 0 of this launch (low and high 32 bits)
    base_hi: ti.u32,
    src: ti.types.ndarray(),  # (12,) kind (0 point, 1 pencil, 2 parallel), sx, sy, sz, fx0, fx1, fy0, fy1, fz, cos_max
    spec_cdf: ti.types.ndarray(),  # (NS,) cumulative probabilities, last = 1
    spec_e: ti.types.ndarray(),  # (NS,) energies keV
    egrid: ti.types.ndarray(),  # (3,) e_lo, de, n
    mu: ti.types.ndarray(),  # (M, NE, 3) photo, compton, rayleigh, 1/mm
    qgrid: ti.types.ndarray(),  # (2,) qtop, NQ
    sf: ti.types.ndarray(),  # (M, NQ) S_mix / Z_mix
    fcum: ti.types.ndarray(),  # (M, NQ) cumulative of F_mix^2 in q^2
    prims: ti.types.ndarray(),  # (P, PRIM_WIDTH)
    pmat: ti.types.ndarray(),  # (P,) int32 material of each primitive
    params: ti.types.ndarray(),  # (3,) e_cut keV, eps mm, max steps
    e0: ti.types.ndarray(),  # (n,) out: initial energy
    e_abs: ti.types.ndarray(),  # (n,) out: energy deposited in the scene
    e_out: ti.types.ndarray(),  # (n,) out: energy leaving the scene (0 if absorbed)
    pos_out: ti.types.ndarray(),  # (n, 3) out: last position (the exit point)
    dir_out: ti.types.ndarray(),  # (n, 3) out: direction after the last interaction
    counts: ti.types.ndarray(),  # (n, 4) int32 out: status (0 absorbed, 1 escaped, 2 killed), first interaction (0 none, 1 photo, 2 compton, 3 rayleigh), n compton, n rayleigh
    real: ti.template(),
):
    for i in range(n):
        lo = base_lo + ti.cast(i, ti.u32)
        hi = base_hi
        if lo < base_lo:
            hi += ti.u32(1)
        s = rng_seed(seed, lo, hi)
        # --- energy: inverse CDF of the discrete spectrum (binary search)
        r, s = uniform(s, real)
        a = 0
        b = spec_cdf.shape[0] - 1
        for _b in range(40):
            if b > a:
                mid = (a + b) // 2
                if spec_cdf[mid] > r:
                    b = mid
                else:
                    a = mid + 1
        E = ti.cast(spec_e[a], real)
        # --- position and direction
        kind = ti.cast(src[0], ti.i32)
        pos = ti.Vector([ti.cast(src[1], real), ti.cast(src[2], real), ti.cast(src[3], real)])
        dr = ti.Vector([ti.cast(0, real), ti.cast(0, real), ti.cast(1, real)])
        if kind == 2:
            r1, s1 = uniform(s, real)
            r2, s2 = uniform(s1, real)
            s = s2
            pos[0] = src[4] + (src[5] - src[4]) * r1
            pos[1] = src[6] + (src[7] - src[6]) * r2
        elif kind == 0:
            # isotropic within the pyramid through the rectangle [fx0, fx1] x [fy0, fy1] at z = fz:
            # cos(theta) uniform in [cos_max, 1], phi uniform, rejected outside the rectangle
            for _t in range(256):
                r1, s1 = uniform(s, real)
                r2, s2 = uniform(s1, real)
                s = s2
                c = 1 - (1 - src[9]) * r1
                sn = ti.sqrt(ti.max(1 - c * c, ti.cast(0, real)))
                ph = 2 * 3.141592653589793 * r2
                dr = ti.Vector([sn * ti.cos(ph), sn * ti.sin(ph), c])
                tz = (src[8] - pos[2]) / c
                hx = pos[0] + tz * dr[0]
                hy = pos[1] + tz * dr[1]
                if hx >= src[4] and hx <= src[5] and hy >= src[6] and hy <= src[7]:
                    break
        e0[i] = E
        eabs = ti.cast(0, real)
        status = 2
        first = 0
        nc = 0
        nr = 0
        ecut = ti.cast(params[0], real)
        eps = ti.cast(params[1], real)
        nmax = ti.cast(params[2], ti.i32)
        for _step in range(nmax):
            m = _material(prims, pmat, pos, real)
            db = _next_boundary(prims, pos, dr, real)
            if m < 0:
                if db >= BIG * 0.5:
                    status = 1  # escaped
                    break
                pos += dr * (db + eps)
            else:
                k, fr = _energy_index(E, egrid, real)
                mph = ti.cast(mu[m, k, 0] * (1 - fr) + mu[m, k + 1, 0] * fr, real)
                mco = ti.cast(mu[m, k, 1] * (1 - fr) + mu[m, k + 1, 1] * fr, real)
                mra = ti.cast(mu[m, k, 2] * (1 - fr) + mu[m, k + 1, 2] * fr, real)
                mtot = mph + mco + mra
                dist = ti.cast(BIG, real)
                if mtot > 0:
                    r, s = uniform(s, real)
                    dist = -ti.log(1 - r) / mtot
                if dist >= db:
                    pos += dr * (db + eps)
                else:
                    pos += dr * dist
                    r, s = uniform(s, real)
                    x = r * mtot
                    if x < mph:
                        if first == 0:
                            first = 1
                        eabs += E
                        E = ti.cast(0, real)
                        status = 0
                        break
                    cth = ti.cast(1, real)
                    if x < mph + mco:
                        if first == 0:
                            first = 2
                        nc += 1
                        cth, s = sample_compton(E, m, sf, qgrid, s, real)
                        e2 = E / (1 + E / ti.cast(ME_KEV, real) * (1 - cth))
                        eabs += E - e2
                        E = e2
                    else:
                        if first == 0:
                            first = 3
                        nr += 1
                        cth, s = sample_rayleigh(E, m, fcum, qgrid, s, real)
                    r, s = uniform(s, real)
                    nu, nv, nw = _rotate(dr[0], dr[1], dr[2], cth, 2 * 3.141592653589793 * r, real)
                    dr = ti.Vector([nu, nv, nw])
                    if E < ecut:
                        eabs += E
                        E = ti.cast(0, real)
                        status = 0
                        break
        if status == 2:  # history cut at max steps: its energy counts as deposited
            eabs += E
            E = ti.cast(0, real)
        e_abs[i] = eabs
        e_out[i] = E
        for a3 in ti.static(range(3)):
            pos_out[i, a3] = pos[a3]
            dir_out[i, a3] = dr[a3]
        counts[i, 0] = status
        counts[i, 1] = first
        counts[i, 2] = nc
        counts[i, 3] = nr


@ti.kernel
def sample_angles(
    kind: ti.i32,  # 0 compton, 1 rayleigh
    E: ti.f64,
    m: ti.i32,
    seed: ti.u32,
    qgrid: ti.types.ndarray(),
    sf: ti.types.ndarray(),
    fcum: ti.types.ndarray(),
    out: ti.types.ndarray(),  # (n,) cos(theta)
    real: ti.template(),
):
    """Draw out.shape[0] scattering cosines with the transport kernel's samplers (for tests)."""
    for i in range(out.shape[0]):
        s = rng_seed(seed, ti.cast(i, ti.u32), ti.u32(0xFFFFFFFF))
        e = ti.cast(E, real)
        c = ti.cast(1, real)
        if kind == 0:
            c, s = sample_compton(e, m, sf, qgrid, s, real)
        else:
            c, s = sample_rayleigh(e, m, fcum, qgrid, s, real)
        out[i] = c
