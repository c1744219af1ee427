"""Taichi kernels of the CT-volume projector: Siddon and trilinear line integrals, and their gradients.

Geometry (one row of ``geo`` (V, 21) per view, float32 or float64 like the volume):

* ``o = geo[v, 0:3]``: the source in voxel-index coordinates;
* ``G = geo[v, 3:12]`` (row-major 3x3): pixel -> index-space ray direction, so that the
  ray of pixel (row r, column c) is ``p(lam) = o + lam * G (c, r, 1)``, ``lam`` being the
  depth ``w`` in mm (the world ray is ``s + lam * M_inv (c, r, 1)``, see
  :class:`taichi_xray.camera.Camera`);
* ``Minv = geo[v, 12:21]``: the camera's ``M_inv``; ``|M_inv (c, r, 1)|`` mm of path per unit
  of ``lam``.

The volume ``vol`` (D0, D1, D2, B) holds B channels (basis-material weights) per voxel
(passed flat, with its three sizes, so that the traversal steps a flat index),
voxel centres at integer indices, the box ``[-0.5, n - 0.5]`` per axis. Output
``out[v, m, r, c] = int c_m ds`` (mm) along the ray, from the source (``lam >= 0``) on,
inside the box and outside the union of the excluded meshes' intervals.

Methods (``method``): 0 = Siddon (Siddon 1985; the incremental traversal of Jacobs et
al. 1998, Phys. Med. Biol. 43:1021, with every next crossing recomputed from the voxel
index, so nothing drifts): exact for a piecewise-constant voxel field. 1 = trilinear: the
field is interpolated trilinearly between voxel centres (held at the edge value in the
outer half-voxel rim) and each included interval of length l is integrated by the
midpoint rule with ``n = ceil(l / step)`` equal steps (exact for a uniform volume).

Meshes inside the volume (``use_mesh``): a pixel's first ``min(count, K)`` slots (face id,
signed depth ``+-t``: ``+`` leaving a mesh, ``-`` entering) whose object is excluded
(``excl_obj[face_obj[f]] != 0``) are visited in order of (|depth|, slot index) by
selection (no sort, nothing written); a counter of open excluded objects splits the ray
into included intervals (counter 0). Unbalanced slots (an exit with nothing open) are
ignored; a never-closed entry excludes the rest of the ray.

Gradients (hand-written; the backward kernel re-traverses every ray):

* Siddon: ``L = |d| sum_seg f_seg (lam_k+1 - lam_k)``; a crossing of the plane
  ``p_a = q`` at ``lam = (q - o_a) / g_a`` contributes ``|d| (f_before - f_after)`` times
  ``dlam/do_a = -1/g_a`` and ``dlam/dg_a = -lam/g_a`` (the box faces are crossings with
  ``f = 0`` outside).
* trilinear: the exact derivative of the midpoint sum at fixed ``n``: per sample
  ``|d| h grad f . dp/dtheta`` plus the moving interval ends.
* interval ends on a mesh boundary: ``dL/dt`` goes to that slot's depth; ends at the
  source do not move.
* voxel values: ``|d|`` x segment length (Siddon) or x ``h`` x trilinear weight,
  scattered with atomic additions (many rays share a voxel).

Pose gradients are written per pixel (``gpose`` (V, H, W, 6): dL/do, dL/dg with
``g = G (c, r, 1)``, weighted by the output gradient); the caller reduces them with
library sums, so nothing serialises on atomics.
"""

import taichi as ti

BIG = 1.0e30
GEO_WIDTH = 21
SIDDON = 0
TRILINEAR = 1


@ti.func
def _voxel(vol: ti.template(), lin, B: ti.template(), real: ti.template()):
    """The B channels of the voxel whose first channel is at flat index ``lin``."""
    f = ti.Vector.zero(real, B)
    for m in ti.static(range(B)):
        f[m] = ti.cast(vol[lin + m], real)
    return f


@ti.func
def _wvox(vol: ti.template(), lin, wgt, B: ti.template(), real: ti.template()):
    """sum_m wgt[m] * vol[lin + m]"""
    s = ti.cast(0, real)
    for m in ti.static(range(B)):
        s += wgt[m] * ti.cast(vol[lin + m], real)
    return s


@ti.func
def _siddon(vol: ti.template(), gvol: ti.template(), n0, n1, n2, o, g, la, lb, dl, wgt, want_vol,
            B: ti.template(), real: ti.template(), bwd: ti.template()):
    """Exact integral over lam in [la, lb] (inside the box). Returns (acc (B,), dL/dla, dL/dlb,
    dL/do (3,), dL/dg (3,)); the gradients (weighted by wgt) only when bwd. ``vol``/``gvol`` are
    flat (D0 * D1 * D2 * B,) views; the voxel's flat index follows the traversal incrementally."""
    S2 = B
    S1 = n2 * B
    S0 = n1 * n2 * B
    p0 = o + la * g
    half = ti.cast(0.5, real)
    ix = ti.min(ti.max(ti.cast(ti.floor(p0[0] + half), ti.i32), 0), n0 - 1)
    iy = ti.min(ti.max(ti.cast(ti.floor(p0[1] + half), ti.i32), 0), n1 - 1)
    iz = ti.min(ti.max(ti.cast(ti.floor(p0[2] + half), ti.i32), 0), n2 - 1)
    sx = 1 if g[0] > 0 else -1
    sy = 1 if g[1] > 0 else -1
    sz = 1 if g[2] > 0 else -1
    lin = ix * S0 + iy * S1 + iz * S2
    big = ti.cast(BIG, real)
    inv = ti.Vector([ti.cast(0, real), ti.cast(0, real), ti.cast(0, real)])
    nx = big
    ny = big
    nz = big
    if g[0] != 0:
        inv[0] = 1 / g[0]
        nx = (ix + half * sx - p0[0]) * inv[0]
    if g[1] != 0:
        inv[1] = 1 / g[1]
        ny = (iy + half * sy - p0[1]) * inv[1]
    if g[2] != 0:
        inv[2] = 1 / g[2]
        nz = (iz + half * sz - p0[2]) * inv[2]
    mu = ti.cast(0, real)
    mu_end = lb - la
    acc = ti.Vector.zero(real, B)
    d_o = ti.Vector.zero(real, 3)
    d_g = ti.Vector.zero(real, 3)
    w_cur = ti.cast(0, real)
    if ti.static(bwd):
        w_cur = _wvox(vol, lin, wgt, B, real)
    w_first = w_cur
    for _ in range(n0 + n1 + n2 + 3):
        m = ti.min(nx, ny, nz)
        end = ti.min(m, mu_end)
        seg = ti.max(end - mu, ti.cast(0, real))
        if ti.static(not bwd):
            acc += _voxel(vol, lin, B, real) * seg
        else:
            if want_vol != 0 and seg > 0:
                for q in ti.static(range(B)):
                    ti.atomic_add(gvol[lin + q], wgt[q] * seg * dl)
        if m >= mu_end:
            break
        axis = 2
        if nx == m:
            axis = 0
        elif ny == m:
            axis = 1
        inside = 1
        if axis == 0:
            ix += sx
            lin += sx * S0
            inside = (ix >= 0) and (ix < n0)
            nx = (ix + half * sx - p0[0]) * inv[0]
        elif axis == 1:
            iy += sy
            lin += sy * S1
            inside = (iy >= 0) and (iy < n1)
            ny = (iy + half * sy - p0[1]) * inv[1]
        else:
            iz += sz
            lin += sz * S2
            inside = (iz >= 0) and (iz < n2)
            nz = (iz + half * sz - p0[2]) * inv[2]
        if not inside:
            break  # left the box a rounding error before lb: lb's own term covers this crossing
        if ti.static(bwd):
            w_next = _wvox(vol, lin, wgt, B, real)
            dlam = dl * (w_cur - w_next)
            w_cur = w_next
            lam = la + m
            for a in ti.static(range(3)):
                if axis == a:
                    d_o[a] -= dlam * inv[a]
                    d_g[a] -= dlam * lam * inv[a]
        mu = ti.max(mu, m)
    return acc * dl, -dl * w_first, dl * w_cur, d_o, d_g


@ti.func
def _axis_weights(x, n, real: ti.template()):
    """Clamped position -> (i0, i1, f, dfdx): lower/upper index, fraction, d fraction / d position."""
    xc = ti.min(ti.max(x, ti.cast(0, real)), ti.cast(n - 1, real))
    i0 = ti.min(ti.cast(ti.floor(xc), ti.i32), ti.max(n - 2, 0))
    i1 = ti.min(i0 + 1, n - 1)
    f = xc - i0
    dfdx = ti.cast(1, real)
    if x < 0 or x > n - 1:
        dfdx = ti.cast(0, real)
    return i0, i1, f, dfdx


@ti.func
def _trilinear(vol: ti.template(), gvol: ti.template(), n0, n1, n2, o, g, la, lb, dl, step, max_samples, wgt,
               want_vol, B: ti.template(), real: ti.template(), bwd: ti.template()):
    """Midpoint rule with n = ceil(l / step) equal steps over lam in [la, lb]; same returns as _siddon."""
    S1 = n2 * B
    S0 = n1 * n2 * B
    ln = lb - la
    ns = ti.min(ti.max(ti.cast(ti.ceil(ln * dl / step), ti.i32), 1), max_samples)
    h = ln / ns
    p0 = o + la * g
    one = ti.cast(1, real)
    acc = ti.Vector.zero(real, B)
    d_o = ti.Vector.zero(real, 3)
    d_g = ti.Vector.zero(real, 3)
    sum_w = ti.cast(0, real)
    s_a = ti.cast(0, real)
    s_b = ti.cast(0, real)
    inv_ns = one / ns
    for k in range(ns):
        tk = (k + ti.cast(0.5, real)) * inv_ns
        mu = (k + ti.cast(0.5, real)) * h
        p = p0 + mu * g
        i0, i1, fx, ddx = _axis_weights(p[0], n0, real)
        j0, j1, fy, ddy = _axis_weights(p[1], n1, real)
        k0, k1, fz, ddz = _axis_weights(p[2], n2, real)
        b000 = i0 * S0 + j0 * S1 + k0 * B
        ox = (i1 - i0) * S0
        oy = (j1 - j0) * S1
        oz = (k1 - k0) * B
        if ti.static(not bwd):
            gx0 = one - fx
            gy0 = one - fy
            gz0 = one - fz
            w00 = gy0 * gz0
            w10 = fy * gz0
            w01 = gy0 * fz
            w11 = fy * fz
            for q in ti.static(range(B)):
                b = b000 + q
                acc[q] += ((vol[b] * gx0 + vol[b + ox] * fx) * w00 + (vol[b + oy] * gx0 + vol[b + ox + oy] * fx) * w10
                           + (vol[b + oz] * gx0 + vol[b + ox + oz] * fx) * w01
                           + (vol[b + oy + oz] * gx0 + vol[b + ox + oy + oz] * fx) * w11)
        else:
            c000 = _wvox(vol, b000, wgt, B, real)
            c100 = _wvox(vol, b000 + ox, wgt, B, real)
            c010 = _wvox(vol, b000 + oy, wgt, B, real)
            c110 = _wvox(vol, b000 + ox + oy, wgt, B, real)
            c001 = _wvox(vol, b000 + oz, wgt, B, real)
            c101 = _wvox(vol, b000 + ox + oz, wgt, B, real)
            c011 = _wvox(vol, b000 + oy + oz, wgt, B, real)
            c111 = _wvox(vol, b000 + ox + oy + oz, wgt, B, real)
            c00 = c000 * (one - fx) + c100 * fx
            c10 = c010 * (one - fx) + c110 * fx
            c01 = c001 * (one - fx) + c101 * fx
            c11 = c011 * (one - fx) + c111 * fx
            c0 = c00 * (one - fy) + c10 * fy
            c1 = c01 * (one - fy) + c11 * fy
            w = c0 * (one - fz) + c1 * fz
            gx = (((c100 - c000) * (one - fy) + (c110 - c010) * fy) * (one - fz)
                  + ((c101 - c001) * (one - fy) + (c111 - c011) * fy) * fz) * ddx
            gy = ((c10 - c00) * (one - fz) + (c11 - c01) * fz) * ddy
            gz = (c1 - c0) * ddz
            gp = ti.Vector([gx, gy, gz])
            sum_w += w
            gd = gp.dot(g)
            s_a += gd * (one - tk)
            s_b += gd * tk
            d_o += gp
            d_g += gp * (la + mu)
            if want_vol != 0:
                s = h * dl
                wx0 = (one - fx) * s
                wx1 = fx * s
                for q in ti.static(range(B)):
                    gq = wgt[q]
                    b = b000 + q
                    ti.atomic_add(gvol[b], gq * wx0 * (one - fy) * (one - fz))
                    ti.atomic_add(gvol[b + ox], gq * wx1 * (one - fy) * (one - fz))
                    ti.atomic_add(gvol[b + oy], gq * wx0 * fy * (one - fz))
                    ti.atomic_add(gvol[b + ox + oy], gq * wx1 * fy * (one - fz))
                    ti.atomic_add(gvol[b + oz], gq * wx0 * (one - fy) * fz)
                    ti.atomic_add(gvol[b + ox + oz], gq * wx1 * (one - fy) * fz)
                    ti.atomic_add(gvol[b + oy + oz], gq * wx0 * fy * fz)
                    ti.atomic_add(gvol[b + ox + oy + oz], gq * wx1 * fy * fz)
    dla = dl * (-sum_w * inv_ns + h * s_a)
    dlb = dl * (sum_w * inv_ns + h * s_b)
    return acc * (h * dl), dla, dlb, d_o * (h * dl), d_g * (h * dl)


@ti.func
def _end_grad(kind, lam, dlam, g, d_o, d_g, gsd: ti.template(), v, r, c, sd, dl, want_sd,
              real: ti.template()):
    """Push dL/dlam of an interval end to the pose (a box face on axis `kind`) or to a slot depth."""
    for a in ti.static(range(3)):
        if kind == a:
            d_o[a] -= dlam / g[a]
            d_g[a] -= dlam * lam / g[a]
    if kind <= -2 and want_sd != 0:
        k = -2 - kind
        sgn = ti.cast(1, real)
        if sd < 0:
            sgn = -sgn
        gsd[v, r, c, k] += dlam * sgn / dl
    return d_o, d_g


@ti.func
def _pixel(v, r, c, vol: ti.template(), n0, n1, n2, geo: ti.template(), count: ti.template(), slot_face: ti.template(),
           slot_depth: ti.template(), face_obj: ti.template(), excl_obj: ti.template(), out: ti.template(),
           gout: ti.template(), gpose: ti.template(), gvol: ti.template(), gsd: ti.template(), method,
           step, max_samples, use_mesh, want_pose, want_vol, want_sd, B: ti.template(), real: ti.template(),
           bwd: ti.template()):
    uc = ti.cast(c, real)
    vr = ti.cast(r, real)
    o = ti.Vector([ti.cast(geo[v, 0], real), ti.cast(geo[v, 1], real), ti.cast(geo[v, 2], real)])
    g = ti.Vector.zero(real, 3)
    d = ti.Vector.zero(real, 3)
    for a in ti.static(range(3)):
        g[a] = ti.cast(geo[v, 3 + 3 * a], real) * uc + ti.cast(geo[v, 4 + 3 * a], real) * vr + ti.cast(
            geo[v, 5 + 3 * a], real)
        d[a] = ti.cast(geo[v, 12 + 3 * a], real) * uc + ti.cast(geo[v, 13 + 3 * a], real) * vr + ti.cast(
            geo[v, 14 + 3 * a], real)
    dl = d.norm()
    wgt = ti.Vector.zero(real, B)
    if ti.static(bwd):
        for q in ti.static(range(B)):
            wgt[q] = ti.cast(gout[v, q, r, c], real)
    big = ti.cast(BIG, real)
    # clip to the box [-0.5, n - 0.5]^3
    lo = -big
    hi = big
    k_lo = -1
    k_hi = -1
    ok = 1
    nn = ti.Vector([n0, n1, n2])
    for a in ti.static(range(3)):
        na = ti.cast(nn[a], real)
        if g[a] == 0:
            if o[a] < -0.5 or o[a] > na - 0.5:
                ok = 0
        else:
            ta = (ti.cast(-0.5, real) - o[a]) / g[a]
            tb = (na - ti.cast(0.5, real) - o[a]) / g[a]
            tmin = ti.min(ta, tb)
            tmax = ti.max(ta, tb)
            if tmin > lo:
                lo = tmin
                k_lo = a
            if tmax < hi:
                hi = tmax
                k_hi = a
    if lo < 0:
        lo = ti.cast(0, real)
        k_lo = -1  # the source is inside the box: that end does not move
    acc = ti.Vector.zero(real, B)
    d_o = ti.Vector.zero(real, 3)
    d_g = ti.Vector.zero(real, 3)
    if ok == 1 and hi > lo:
        nev = 0
        K = slot_face.shape[3]
        if use_mesh != 0:
            nev = ti.min(count[v, r, c], K)
        cnt = 0
        cur = lo
        cur_kind = k_lo
        prev_t = -big
        prev_k = -1
        done = 0
        for _e in range(nev + 1):
            if done == 0:
                best_t = big
                best_k = -1
                for k in range(nev):
                    if excl_obj[face_obj[slot_face[v, r, c, k]]] != 0:
                        tk = ti.abs(ti.cast(slot_depth[v, r, c, k], real))
                        if (tk > prev_t or (tk == prev_t and k > prev_k)) and tk < best_t:
                            best_t = tk
                            best_k = k
                lam_e = best_t / dl
                a = cur
                b = cur
                ka = cur_kind
                kb = k_hi
                do_seg = 0
                if best_k < 0 or lam_e >= hi:
                    done = 1
                    if cnt == 0:
                        b = hi
                        do_seg = 1
                else:
                    prev_t = best_t
                    prev_k = best_k
                    if slot_depth[v, r, c, best_k] < 0:  # entering an excluded mesh
                        if cnt == 0 and lam_e > cur:
                            b = lam_e
                            kb = -2 - best_k
                            do_seg = 1
                        cnt += 1
                    elif cnt > 0:  # leaving one
                        cnt -= 1
                        if cnt == 0 and lam_e > cur:
                            cur = lam_e
                            cur_kind = -2 - best_k
                if do_seg == 1 and b > a:
                    sacc = ti.Vector.zero(real, B)
                    dla = ti.cast(0, real)
                    dlb = ti.cast(0, real)
                    so = ti.Vector.zero(real, 3)
                    sg = ti.Vector.zero(real, 3)
                    if method == SIDDON:
                        sacc, dla, dlb, so, sg = _siddon(vol, gvol, n0, n1, n2, o, g, a, b, dl, wgt, want_vol, B,
                                                         real, bwd)
                    else:
                        sacc, dla, dlb, so, sg = _trilinear(vol, gvol, n0, n1, n2, o, g, a, b, dl, step, max_samples,
                                                            wgt, want_vol, B, real, bwd)
                    acc += sacc
                    if ti.static(bwd):
                        d_o += so
                        d_g += sg
                        sda = ti.cast(0, real)
                        sdb = ti.cast(0, real)
                        if ka <= -2:
                            sda = ti.cast(slot_depth[v, r, c, -2 - ka], real)
                        if kb <= -2:
                            sdb = ti.cast(slot_depth[v, r, c, -2 - kb], real)
                        d_o, d_g = _end_grad(ka, a, dla, g, d_o, d_g, gsd, v, r, c, sda, dl, want_sd, real)
                        d_o, d_g = _end_grad(kb, b, dlb, g, d_o, d_g, gsd, v, r, c, sdb, dl, want_sd, real)
    if ti.static(not bwd):
        for q in ti.static(range(B)):
            out[v, q, r, c] = acc[q]
    else:
        if want_pose != 0:
            for a in ti.static(range(3)):
                gpose[v, r, c, a] = d_o[a]
                gpose[v, r, c, 3 + a] = d_g[a]


@ti.kernel
def project_forward(
    vol: ti.types.ndarray(),  # (D0 * D1 * D2 * B,) basis weights, flat view of (D0, D1, D2, B)
    geo: ti.types.ndarray(),  # (V, 21) o, G, M_inv
    count: ti.types.ndarray(),  # (V, H, W) int32 (read when use_mesh)
    slot_face: ti.types.ndarray(),  # (V, H, W, K) int32
    slot_depth: ti.types.ndarray(),  # (V, H, W, K) signed depths, mm
    face_obj: ti.types.ndarray(),  # (F,) int32
    excl_obj: ti.types.ndarray(),  # (P,) int32, nonzero = replaces the volume
    out: ti.types.ndarray(),  # (V, B, H, W) mm, overwritten
    method: ti.i32,
    step: ti.f32,  # trilinear step, mm (f32: no f64 needed on Vulkan/Metal)
    max_samples: ti.i32,
    use_mesh: ti.i32,
    n0: ti.i32,
    n1: ti.i32,
    n2: ti.i32,
    B: ti.template(),
    real: ti.template(),
):
    for v, r, c in ti.ndrange(out.shape[0], out.shape[2], out.shape[3]):
        _pixel(v, r, c, vol, n0, n1, n2, geo, count, slot_face, slot_depth, face_obj, excl_obj, out, out, out, vol, out,
               method, ti.cast(step, real), max_samples, use_mesh, 0, 0, 0, B, real, False)


@ti.kernel
def project_backward(
    vol: ti.types.ndarray(),  # (D0 * D1 * D2 * B,) flat
    geo: ti.types.ndarray(),  # (V, 21)
    count: ti.types.ndarray(),
    slot_face: ti.types.ndarray(),
    slot_depth: ti.types.ndarray(),
    face_obj: ti.types.ndarray(),
    excl_obj: ti.types.ndarray(),
    gout: ti.types.ndarray(),  # (V, B, H, W) dLoss/dout
    gpose: ti.types.ndarray(),  # (V, H, W, 6) per pixel dLoss/do, dLoss/dg (written when want_pose)
    gvol: ti.types.ndarray(),  # (D0 * D1 * D2 * B,) flat, accumulated (zero on entry) when want_vol
    gsd: ti.types.ndarray(),  # (V, H, W, K) accumulated (zero on entry) when want_sd
    method: ti.i32,
    step: ti.f32,
    max_samples: ti.i32,
    use_mesh: ti.i32,
    want_pose: ti.i32,
    want_vol: ti.i32,
    want_sd: ti.i32,
    n0: ti.i32,
    n1: ti.i32,
    n2: ti.i32,
    B: ti.template(),
    real: ti.template(),
):
    for v, r, c in ti.ndrange(gout.shape[0], gout.shape[2], gout.shape[3]):
        _pixel(v, r, c, vol, n0, n1, n2, geo, count, slot_face, slot_depth, face_obj, excl_obj, gout, gout, gpose, gvol, gsd,
               method, ti.cast(step, real), max_samples, use_mesh, want_pose, want_vol, want_sd, B, real, True)
