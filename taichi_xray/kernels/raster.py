"""Taichi kernels of the signed-depth rasterizer: forward, backward, slot utilities.

Every kernel takes its arrays as ``ti.types.ndarray()`` (torch tensors or
Taichi ndarrays on the kernels' device) and a ``real`` template argument
(``ti.f32`` or ``ti.f64``) that fixes the precision of the arithmetic; the
kernels are compiled once per precision and flag combination, never per call.

Work items are (instance, face) pairs: an *instance* is one vertex set (a pose
or a shape) seen by one camera, so several views and several poses render in
one launch. ``inst[i] = (vertex set, camera)``.

Per-face channel weights
------------------------
Face ``f`` adds ``face_w[f, j] * sd`` to channel ``face_ch[f, j]`` (``j < J``;
channel ``-1`` = none) of every pixel it covers, where ``sd`` is its signed
depth there. For closed surfaces the channels are materials: a face of object
``q`` (material ``m_q``) inside object ``p`` (material ``m_p``) carries
``(m_q, +1)`` and ``(m_p, -1)``, so each channel sums to the exclusive path
length of its material (nesting without per-object images). For per-object
path lengths, the channel is the object and ``J = 1``. Tetrahedral meshes use
the same form with density jumps as weights.

Geometry of one face, for one pixel (u, v) = (c, r):

* coverage: edge functions of the projected triangle, evaluated so that an
  edge shared by two faces gives values of exactly opposite sign in both
  (each edge is evaluated from its lower vertex index to its higher one and
  negated when the face runs the other way), and a top-left tie-break for
  pixel centres exactly on an edge or vertex. A closed mesh therefore covers
  every pixel the same number of times from the front as from the back.
* depth: the distance from the source along the pixel's ray to the face's
  plane, ``t = w |d|`` with ``d = M^-1 (u, v, 1)`` (whose depth component is
  1, so the point ``s + w d`` has depth ``w``) and ``1/w`` interpolated
  perspective-correctly with the barycentric weights of the same edge
  functions (exact for a plane; a convex combination, so it cannot leave the
  face's depth range however thin the face is on the image).
* sign: ``+t`` where the ray leaves the mesh (``n . d > 0``), ``-t`` where it
  enters. Twice the projected signed area is ``det(M) (v0 - s) . n /
  (w0 w1 w2)``, so the sign is ``sign(area) * sign(det M)`` (cameras carry
  ``sign(det M)``) and the forward pass never reads the face normal. The forward
  kernel reads each face as its sorted vertex indices and the parity of that
  order (``rasterize._sorted_rows``), so the area's sign is multiplied by it.
"""

import taichi as ti

# Camera rows (see pack_cameras in taichi_xray/rasterize.py): P (12), M^-1 (9), source (3), sign(det M)
CAM_WIDTH = 25

# status[i, s, p]: per instance, per object (rare events only: no contended atomics)
ST_BEHIND = 0  # faces entirely behind the source plane (culled)
ST_STRADDLE = 1  # faces crossing the source plane (not rasterized; the caller raises)
ST_NEED = 2  # [i, ST_NEED, 0]: the largest count of a pixel whose slots overflowed K (0: none did)
N_STATUS = 3

BOX_BLOCK = 4096  # vertices per block of the bounding-box reduction in raster_forward
# CPU: up to this many vertices the bounding-box reduction runs on the launching thread (a parallel
# loop costs a wake-up of the worker threads, measured ~0.15 ms on the 2-core VM, more than reducing
# 65k vertices serially)
SERIAL_BOX_VERTICES = 65536
PROJ_BLOCK = 256  # CPU: vertices per work item of the projection loop in raster_forward (camera in registers)


@ti.func
def _project(V: ti.template(), vs, i, cam: ti.template(), cm, real: ti.template()):
    x = ti.cast(V[vs, i, 0], real)
    y = ti.cast(V[vs, i, 1], real)
    z = ti.cast(V[vs, i, 2], real)
    h0 = cam[cm, 0] * x + cam[cm, 1] * y + cam[cm, 2] * z + cam[cm, 3]
    h1 = cam[cm, 4] * x + cam[cm, 5] * y + cam[cm, 6] * z + cam[cm, 7]
    w = cam[cm, 8] * x + cam[cm, 9] * y + cam[cm, 10] * z + cam[cm, 11]
    return h0 / w, h1 / w, w


@ti.func
def _face_edges(p0, p1, p2, real: ti.template()):
    """Per-face constants of a face whose vertex indices increase, i0 < i1 < i2 (p0, p1, p2: their
    projected (u, v)); see ``rasterize._sorted_rows``.

    Returns s and, per edge, (ax, ay, dx, dy): the edge from its lower vertex index to its higher one,
    (i1 -> i2), (i0 -> i2), (i0 -> i1), opposite the corners 0, 1, 2. ``s`` = +-1 (0: seen edge-on,
    covers nothing) is the sign of twice the projected signed area of (p0, p1, p2) (the first
    edge's value at p0) and orients the edge functions inside-positive: the face runs edges 0 and 2 in
    their canonical direction (k = s) and edge 1 against it (k = -s). The per-pixel value ``k * (dx *
    (py - ay) - dy * (px - ax))`` is computed from the same canonical operands by both faces of an
    edge, so they see exactly opposite values; since the directions are fixed by the row's order, no
    index comparison (a data-dependent branch per edge) is needed per face.
    """
    ax0, ay0, dx0, dy0 = p1[0], p1[1], p2[0] - p1[0], p2[1] - p1[1]
    ax1, ay1, dx1, dy1 = p0[0], p0[1], p2[0] - p0[0], p2[1] - p0[1]
    ax2, ay2, dx2, dy2 = p0[0], p0[1], p1[0] - p0[0], p1[1] - p0[1]
    area2 = dx0 * (p0[1] - ay0) - dy0 * (p0[0] - ax0)
    s = ti.cast(0, real)
    if area2 > 0:
        s = ti.cast(1, real)
    if area2 < 0:
        s = ti.cast(-1, real)
    return s, ax0, ay0, dx0, dy0, ax1, ay1, dx1, dy1, ax2, ay2, dx2, dy2


@ti.func
def _sort3(i0, i1, i2, p0, p1, p2):
    """The corners' positions in increasing order of their vertex indices (three compare-exchanges)."""
    a, b, c = i0, i1, i2
    pa, pb, pc = p0, p1, p2
    if b < a:
        a, b = b, a
        pa, pb = pb, pa
    if c < b:
        b, c = c, b
        pb, pc = pc, pb
    if b < a:
        a, b = b, a
        pa, pb = pb, pa
    return pa, pb, pc


@ti.func
def _edge_value(ax, ay, dx, dy, k, px, py):
    """The edge function at (px, py), same arithmetic for both faces of an edge."""
    return k * (dx * (py - ay) - dy * (px - ax))


SPAN_MIN = 6  # faces wider than this many pixels test only the columns near their span on each row


@ti.func
def _span(ax0, ay0, dx0, dy0, k0, ax1, ay1, dx1, dy1, k1, ax2, ay2, dx2, dy2, k2, py, c0, c1, real: ti.template()):
    """Columns [ca, cb] of row py that can be inside the face: where each edge function (linear in
    px) is >= 0, widened by one pixel (the exact test still decides every pixel, so rounding here
    cannot change coverage; it only saves testing the pixels of the bounding box that lie far outside)."""
    lo = ti.cast(c0, real)
    hi = ti.cast(c1, real)
    for e in ti.static(range(3)):
        ax, ay, dx, dy, k = ax0, ay0, dx0, dy0, k0
        if ti.static(e == 1):
            ax, ay, dx, dy, k = ax1, ay1, dx1, dy1, k1
        if ti.static(e == 2):
            ax, ay, dx, dy, k = ax2, ay2, dx2, dy2, k2
        # e(px) = A + B px
        B = -k * dy
        A = k * (dx * (py - ay) + dy * ax)
        if B > 0:
            lo = ti.max(lo, -A / B)
        elif B < 0:
            hi = ti.min(hi, -A / B)
        elif A < 0:
            hi = lo - 2  # parallel to the row and outside: empty
    ca = ti.max(c0, ti.cast(ti.floor(lo), ti.i32) - 1)
    cb = ti.min(c1, ti.cast(ti.ceil(hi), ti.i32) + 1)
    return ca, cb


@ti.func
def _inside(e, tl) -> ti.i32:
    return (e > 0) or (e == 0 and tl == 1)


@ti.func
def _tl(k, dx, dy) -> ti.i32:
    """Whether an edge (canonical direction (dx, dy), run as k (dx, dy) by the face, inside on the
    left) is a top or a left edge of the face: the tie rule for pixel centres exactly on it."""
    tdx = k * dx
    tdy = k * dy
    return (tdy > 0) or (tdy == 0 and tdx < 0)


@ti.func
def _covers(e0, e1, e2, s, dx0, dy0, dx1, dy1, dx2, dy2) -> ti.i32:
    """Whether the face covers a pixel centre with edge values e0, e1, e2 (inside-positive): all
    positive, or on an edge or a vertex (some zero, none negative) whose edges are top-left. One
    data-dependent branch (the minimum's sign); the tie rule is evaluated only for exact zeros
    (vertices are finite, checked on input, so the minimum sees no NaN)."""
    m = ti.min(e0, e1, e2)
    out = 0
    if m > 0:
        out = 1
    elif m == 0:
        out = (_inside(e0, _tl(s, dx0, dy0)) and _inside(e1, _tl(-s, dx1, dy1))
               and _inside(e2, _tl(s, dx2, dy2)))
    return out


@ti.func
def _ray(cam: ti.template(), cm, px, py):
    dx = cam[cm, 12] * px + cam[cm, 13] * py + cam[cm, 14]
    dy = cam[cm, 15] * px + cam[cm, 16] * py + cam[cm, 17]
    dz = cam[cm, 18] * px + cam[cm, 19] * py + cam[cm, 20]
    return dx, dy, dz


@ti.func
def _bounds(p0, p1, p2, H, W):
    """Pixel rows/columns whose centres the projected face's bounding box contains."""
    c0 = ti.max(ti.cast(ti.ceil(ti.min(p0[0], p1[0], p2[0])), ti.i32), 0)
    c1 = ti.min(ti.cast(ti.floor(ti.max(p0[0], p1[0], p2[0])), ti.i32), W - 1)
    r0 = ti.max(ti.cast(ti.ceil(ti.min(p0[1], p1[1], p2[1])), ti.i32), 0)
    r1 = ti.min(ti.cast(ti.floor(ti.max(p0[1], p1[1], p2[1])), ti.i32), H - 1)
    return c0, c1, r0, r1


@ti.func
def _fetch(V: ti.template(), proj: ti.template(), ref: ti.template(), i, vs, k, kp, cam: ti.template(), cm,
           pre: ti.template(), real: ti.template()):
    """(u, v, w, w - w_ref) of vertex k in instance i: from the projection pass (at its position kp
    there), or projected here.

    The depth relative to the instance's reference point, ``P[2, :3] . (x - c)``, is computed
    from coordinates relative to c, so it keeps float32 precision where ``w`` itself
    (hundreds of mm from the source) would lose it."""
    u = ti.cast(0, real)
    v = ti.cast(0, real)
    w = ti.cast(0, real)
    dw = ti.cast(0, real)
    if ti.static(pre):
        u = proj[i, kp, 0]
        v = proj[i, kp, 1]
        w = proj[i, kp, 2]
        dw = proj[i, kp, 3]
    else:
        u, v, w = _project(V, vs, k, cam, cm, real)
        dw = _rel_depth(V, vs, k, cam, cm, ref, i, real)
    return u, v, w, dw


@ti.func
def _rel_depth(V: ti.template(), vs, k, cam: ti.template(), cm, ref: ti.template(), i, real: ti.template()):
    return (cam[cm, 8] * (ti.cast(V[vs, k, 0], real) - ref[i, 0]) + cam[cm, 9] * (ti.cast(V[vs, k, 1], real) - ref[i, 1])
            + cam[cm, 10] * (ti.cast(V[vs, k, 2], real) - ref[i, 2]))


@ti.func
def _relative(sd, w0, dl):
    """Signed depth measured from the reference depth w0 instead of the source (same sign rule)."""
    out = sd - w0 * dl
    if sd < 0:
        out = sd + w0 * dl
    return out


@ti.func
def _affine(face_lin: ti.template(), obj_xref: ti.template(), vs, li, j, o, cam: ti.template(), cm, ref: ti.template(),
            i, dx, dy, dz, dl, real: ti.template()):
    """(alpha, beta) of column j of affine face row li on the ray d (see raster_forward)."""
    w0 = ref[i, 3]
    # x0 - x_ref = (s - x_ref) + w0 d
    qx = cam[cm, 21] - obj_xref[vs, o, 0] + w0 * dx
    qy = cam[cm, 22] - obj_xref[vs, o, 1] + w0 * dy
    qz = cam[cm, 23] - obj_xref[vs, o, 2] + w0 * dz
    gx = ti.cast(face_lin[vs, li, j, 1], real)
    gy = ti.cast(face_lin[vs, li, j, 2], real)
    gz = ti.cast(face_lin[vs, li, j, 3], real)
    al = ti.cast(face_lin[vs, li, j, 0], real) + gx * qx + gy * qy + gz * qz
    be = (gx * dx + gy * dy + gz * dz) / dl
    return al, be


@ti.func
def _raster_face(i, t, V: ti.template(), F: ti.template(), Fp: ti.template(), fid: ti.template(), face_obj: ti.template(),
                 face_ch: ti.template(), face_w: ti.template(), face_bal: ti.template(), inst: ti.template(),
                 cam: ti.template(), ref: ti.template(), proj: ti.template(), L: ti.template(), count: ti.template(),
                 slot_face: ti.template(), slot_depth: ti.template(), balance: ti.template(), status: ti.template(),
                 lin_idx: ti.template(), face_lin: ti.template(), obj_xref: ti.template(), H, W, K, J: ti.template(),
                 store: ti.template(), track: ti.template(), pre: ti.template(), lin: ti.template(),
                 perm: ti.template(), real: ti.template()):
    """Row t of the faces in instance i: project, cull, cover, and accumulate (see raster_forward)."""
    vs = inst[i, 0]
    cm = inst[i, 1]
    f = fid[t]
    i0 = F[t, 0]
    i1 = F[t, 1]
    i2 = F[t, 2]
    j0, j1, j2 = i0, i1, i2  # where the projection pass put the corners
    if ti.static(perm):
        j0 = Fp[t, 0]
        j1 = Fp[t, 1]
        j2 = Fp[t, 2]
    u0, v0, w0, q0 = _fetch(V, proj, ref, i, vs, i0, j0, cam, cm, pre, real)
    u1, v1, w1, q1 = _fetch(V, proj, ref, i, vs, i1, j1, cam, cm, pre, real)
    u2, v2, w2, q2 = _fetch(V, proj, ref, i, vs, i2, j2, cam, cm, pre, real)
    if w0 <= 0 or w1 <= 0 or w2 <= 0:
        o = face_obj[f]
        if w0 <= 0 and w1 <= 0 and w2 <= 0:
            ti.atomic_add(status[i, ST_BEHIND, o], 1)
        else:
            ti.atomic_add(status[i, ST_STRADDLE, o], 1)
    else:
        p0 = ti.Vector([u0, v0])
        p1 = ti.Vector([u1, v1])
        p2 = ti.Vector([u2, v2])
        c0, c1, r0, r1 = _bounds(p0, p1, p2, H, W)
        if c0 <= c1 and r0 <= r1:  # most faces of a fine mesh contain no pixel centre
            s, ax0, ay0, dx0, dy0, ax1, ay1, dx1, dy1, ax2, ay2, dx2, dy2 = _face_edges(p0, p1, p2, real)
            if s != 0:  # seen edge-on: covers nothing
                k0 = s
                k1 = -s
                k2 = s
                sg = s * cam[cm, 24] * ti.cast(F[t, 3], real)  # +1 where the ray leaves the mesh (F[t, 3]: the
                # row's order against the face's, see rasterize._sorted_rows)
                # the ray's coefficients, read once per face (the atomic adds below keep the compiler
                # from hoisting reads of the arrays out of the pixel loops)
                m0 = cam[cm, 12]
                m1 = cam[cm, 13]
                m2 = cam[cm, 14]
                m3 = cam[cm, 15]
                m4 = cam[cm, 16]
                m5 = cam[cm, 17]
                m6 = cam[cm, 18]
                m7 = cam[cm, 19]
                m8 = cam[cm, 20]
                # what depends on the face only is computed at its first covered pixel (most faces of a
                # fine mesh cover none): the interpolation factors and the face's table rows
                ready = 0
                iw0 = ti.cast(0, real)
                iw1 = ti.cast(0, real)
                iw2 = ti.cast(0, real)
                jw0 = ti.cast(0, real)
                jw1 = ti.cast(0, real)
                jw2 = ti.cast(0, real)
                chv = ti.Vector([-1 for _ in ti.static(range(J))], dt=ti.i32)
                wv = ti.Vector([ti.cast(0, real) for _ in ti.static(range(J))])
                li = -1
                bal = -1
                for r in range(r0, r1 + 1):
                    py = ti.cast(r, real)
                    ca, cb = c0, c1
                    if c1 - c0 > SPAN_MIN:  # a wide face: only the columns near its span on this row
                        ca, cb = _span(ax0, ay0, dx0, dy0, k0, ax1, ay1, dx1, dy1, k1, ax2, ay2, dx2, dy2, k2,
                                       py, c0, c1, real)
                    for c in range(ca, cb + 1):
                        px = ti.cast(c, real)
                        e0 = _edge_value(ax0, ay0, dx0, dy0, k0, px, py)
                        e1 = _edge_value(ax1, ay1, dx1, dy1, k1, px, py)
                        e2 = _edge_value(ax2, ay2, dx2, dy2, k2, px, py)
                        if _covers(e0, e1, e2, s, dx0, dy0, dx1, dy1, dx2, dy2):
                            if ready == 0:
                                ready = 1
                                iw0 = 1 / w0
                                iw1 = 1 / w1
                                iw2 = 1 / w2
                                jw0 = iw0 * q0
                                jw1 = iw1 * q1
                                jw2 = iw2 * q2
                                for j in ti.static(range(J)):
                                    chv[j] = face_ch[t, j]
                                    wv[j] = face_w[t, j]
                                if ti.static(lin):
                                    li = lin_idx[f]
                                if ti.static(track):
                                    bal = face_bal[t]
                            dx = m0 * px + m1 * py + m2
                            dy = m3 * px + m4 * py + m5
                            dz = m6 * px + m7 * py + m8
                            dl = ti.sqrt(dx * dx + dy * dy + dz * dz)
                            # barycentric weights e_k / (e0 + e1 + e2): 1 / w and (w - w0) / w are convex
                            # combinations of the corners' values (exact for a plane, and they cannot leave the
                            # face's range however thin the face is on the image)
                            S = e0 * iw0 + e1 * iw1 + e2 * iw2  # (e0 + e1 + e2) / w
                            gS = sg * dl / S
                            sd = gS * (e0 + e1 + e2)
                            sdr = gS * (e0 * jw0 + e1 * jw1 + e2 * jw2)  # sign * (w - w0) |d|
                            if li < 0:
                                for j in ti.static(range(J)):
                                    if chv[j] >= 0:
                                        ti.atomic_add(L[i, chv[j], r, c], wv[j] * sdr)
                            else:  # affine densities: sign * (tau alpha + tau^2 beta / 2)
                                for j in ti.static(range(J)):
                                    if chv[j] >= 0:
                                        al, be = _affine(face_lin, obj_xref, vs, li, j, face_obj[f], cam, cm,
                                                         ref, i, dx, dy, dz, dl, real)
                                        tau = sg * sdr
                                        ti.atomic_add(L[i, chv[j], r, c], sg * tau * (al + 0.5 * tau * be))
                            if ti.static(store):
                                k = ti.atomic_add(count[i, r, c], 1)
                                if k < K:
                                    slot_face[i, r, c, k] = f
                                    slot_depth[i, r, c, k] = sd
                                else:  # rare: the caller grows K to the largest count (no pass over count)
                                    ti.atomic_max(status[i, ST_NEED, 0], k + 1)
                            if ti.static(track):
                                if bal >= 0:
                                    ti.atomic_add(balance[i, bal, r, c], ti.cast(sg, ti.i32))


@ti.kernel
def raster_forward(
    V: ti.types.ndarray(),  # (S, N, 3) vertex sets, world mm
    F: ti.types.ndarray(),  # (M, 4) int32 face rows in traversal order: sorted vertex indices, parity (_sorted_rows)
    Fp: ti.types.ndarray(),  # (M, 3) int32 positions of each row's (sorted) corners in proj; read when perm
    vpos: ti.types.ndarray(),  # (N,) int32 position of every vertex in proj; read when perm
    fid: ti.types.ndarray(),  # (M,) int32 face id of each row of F (into the slots, face_obj and lin_idx)
    face_obj: ti.types.ndarray(),  # (M,) int32 object of every face
    face_ch: ti.types.ndarray(),  # (M, J) int32 channel per weight (-1 = none), rows in traversal order (as F)
    face_w: ti.types.ndarray(),  # (M, J) weights, rows in traversal order (as F)
    face_bal: ti.types.ndarray(),  # (M,) int32 balance-tracking index (-1 = none), traversal order; read when track
    inst: ti.types.ndarray(),  # (I, 2) int32: vertex set, camera
    cam: ti.types.ndarray(),  # (n_cams, CAM_WIDTH)
    ref: ti.types.ndarray(),  # (I, 4) out: reference point c (mm) and its depth w0 per instance
    vbox: ti.types.ndarray(),  # (S, ceil(N / BOX_BLOCK), 6) scratch: per block of vertices, min and max
    proj: ti.types.ndarray(),  # (I, N, 4) scratch u, v, w, w - w0; used when pre != 0
    L: ti.types.ndarray(),  # (I, C, H, W) channel images, accumulated (zero on entry)
    count: ti.types.ndarray(),  # (I, H, W) int32 covering faces (zero on entry); used when store != 0
    slot_face: ti.types.ndarray(),  # (I, H, W, K) int32
    slot_depth: ti.types.ndarray(),  # (I, H, W, K) signed depths
    balance: ti.types.ndarray(),  # (I, B, H, W) int32 sums of signs (zero on entry); used when track != 0
    status: ti.types.ndarray(),  # (I, N_STATUS, P) int32 per instance: faces behind / straddling per object, need
    lin_idx: ti.types.ndarray(),  # (M,) int32 row in face_lin (-1 = constant weights); read when lin != 0
    face_lin: ti.types.ndarray(),  # (S, ML, J, 4) per column: density jump c at x_ref and its gradient jump
    obj_xref: ti.types.ndarray(),  # (S, P, 3) reference point of each object's affine fields
    J: ti.template(),
    store: ti.template(),
    track: ti.template(),
    pre: ti.template(),
    lin: ti.template(),
    perm: ti.template(),  # 1: proj holds the vertices at vpos (rows of F then gather nearly in sequence); needs pre
    serial_box: ti.template(),  # 1: the bounding-box reduction runs serially (few vertices, see SERIAL_BOX_VERTICES)
    cpu: ti.template(),  # 1: loops shaped for CPU threads (blocks of vertices, faces outer); 0: GPU
    real: ti.template(),
):
    """One launch over (instance, face): project, cull, cover, and accumulate signed depths.

    L, count and balance must be zero on entry (the caller clears them with
    memset-speed library calls); status is cleared here. The kernel first computes
    ``ref`` (the centre of each instance's vertex set's bounding box and its depth),
    reduced per block of vertices in a fixed order (exact: min and max do not round).
    ``F`` may hold the faces in another order than the face ids (a spatial order, so that
    consecutive faces write nearby pixels and read nearby vertices); ``fid``
    maps each row to its face id, which goes into the slots and indexes ``face_obj`` and
    ``lin_idx``; ``face_ch``, ``face_w`` and ``face_bal`` are given in the order of ``F``
    (read sequentially, once per face, at its first covered pixel). With ``store``, each covering face also takes a slot
    (face id, signed depth) from the per-pixel counter; slots beyond K are dropped (the
    caller reads the largest count and grows K). With ``track``, faces whose
    ``face_bal`` is >= 0 add their sign to that balance image (open meshes). With
    ``pre``, a first loop projects every vertex once (large meshes: a vertex is shared
    by ~6 faces); without, each face projects its corners (small meshes: one parallel
    loop less to dispatch). With ``perm`` (and ``pre``), vertex k is stored at ``vpos[k]``
    in ``proj`` and row t reads its corners at ``Fp[t]``: large meshes are traversed in a
    spatial order (see ``rasterize._face_order``), and their vertices are stored in the
    order that traversal first uses them, so both the corner reads and the pixel writes
    stay in the cache. Each row of ``F`` holds its face's vertex indices in increasing order and
    +-1 the parity of that order (``rasterize._sorted_rows``): the edges' canonical directions (the
    tie rules) then follow from the row, and the parity restores the face's sign.

    Channels accumulate ``w * sign * (t - w0 |d|)`` rather than ``w * sign * t``, with w0
    the depth of a reference point near the scene (per instance) and ``t - w0 |d|``
    interpolated from the vertices' depths relative to it: the signs of a closed surface
    balance on every ray, so the sums are the same, but the terms are the size of the
    scene rather than its distance from the source and carry float32 precision relative
    to that size. Slots keep the absolute signed depth.

    With ``lin``, faces with ``lin_idx >= 0`` carry affine density jumps instead of constant
    weights (tetrahedral meshes with densities linear in each tetrahedron): with the point
    x0 = s + w0 d of the ray at the reference depth, tau = (w - w0) |d| and the face's jump
    ``c + dg . (x - x_ref)`` for channel j, the face adds ``sign (tau alpha + tau^2 beta / 2)``
    with ``alpha = c + dg . (x0 - x_ref)``, ``beta = dg . d/|d|``: along the ray the density
    of a tetrahedron is alpha + beta tau, and these terms telescope to its integral.
    """
    H = L.shape[2]
    W = L.shape[3]
    K = slot_face.shape[3]
    N = V.shape[1]
    NB = vbox.shape[1]
    if ti.static(serial_box):
        ti.loop_config(serialize=True)
    for s, b in ti.ndrange(vbox.shape[0], NB):  # bounds of each vertex set, per block of vertices
        k0 = b * BOX_BLOCK
        mn = ti.Vector([ti.cast(V[s, k0, 0], real), ti.cast(V[s, k0, 1], real), ti.cast(V[s, k0, 2], real)])
        mx = mn
        for k in range(k0 + 1, ti.min(k0 + BOX_BLOCK, N)):
            x = ti.Vector([ti.cast(V[s, k, 0], real), ti.cast(V[s, k, 1], real), ti.cast(V[s, k, 2], real)])
            mn = ti.min(mn, x)
            mx = ti.max(mx, x)
        for a in ti.static(range(3)):
            vbox[s, b, a] = mn[a]
            vbox[s, b, 3 + a] = mx[a]
    ti.loop_config(serialize=True)
    for i in range(inst.shape[0]):  # reference point and depth per instance; clear the status counters
        vs = inst[i, 0]
        cm = inst[i, 1]
        mn = ti.Vector([vbox[vs, 0, 0], vbox[vs, 0, 1], vbox[vs, 0, 2]])
        mx = ti.Vector([vbox[vs, 0, 3], vbox[vs, 0, 4], vbox[vs, 0, 5]])
        for b in range(1, NB):
            mn = ti.min(mn, ti.Vector([vbox[vs, b, 0], vbox[vs, b, 1], vbox[vs, b, 2]]))
            mx = ti.max(mx, ti.Vector([vbox[vs, b, 3], vbox[vs, b, 4], vbox[vs, b, 5]]))
        c = 0.5 * (mn + mx)
        for a in ti.static(range(3)):
            ref[i, a] = c[a]
        ref[i, 3] = cam[cm, 8] * c[0] + cam[cm, 9] * c[1] + cam[cm, 10] * c[2] + cam[cm, 11]
        for q in range(status.shape[2]):
            for e in ti.static(range(N_STATUS)):
                status[i, e, q] = 0
    if ti.static(pre):
        # parallel over blocks of vertices (CPU: PROJ_BLOCK; GPU: a thread per vertex), the camera and
        # reference point of each instance read once per block
        pblock = ti.static(PROJ_BLOCK if cpu else 1)
        for kb in range((V.shape[1] + pblock - 1) // pblock):
            k_end = ti.min(V.shape[1], (kb + 1) * pblock)
            for i in range(inst.shape[0]):
                vs = inst[i, 0]
                cm = inst[i, 1]
                # same arithmetic as _project and _rel_depth
                a0 = cam[cm, 0]
                a1 = cam[cm, 1]
                a2 = cam[cm, 2]
                a3 = cam[cm, 3]
                a4 = cam[cm, 4]
                a5 = cam[cm, 5]
                a6 = cam[cm, 6]
                a7 = cam[cm, 7]
                a8 = cam[cm, 8]
                a9 = cam[cm, 9]
                a10 = cam[cm, 10]
                a11 = cam[cm, 11]
                rx = ref[i, 0]
                ry = ref[i, 1]
                rz = ref[i, 2]
                for k in range(kb * pblock, k_end):
                    x = ti.cast(V[vs, k, 0], real)
                    y = ti.cast(V[vs, k, 1], real)
                    z = ti.cast(V[vs, k, 2], real)
                    h0 = a0 * x + a1 * y + a2 * z + a3
                    h1 = a4 * x + a5 * y + a6 * z + a7
                    w = a8 * x + a9 * y + a10 * z + a11
                    kp = k
                    if ti.static(perm):
                        kp = vpos[k]
                    proj[i, kp, 0] = h0 / w
                    proj[i, kp, 1] = h1 / w
                    proj[i, kp, 2] = w
                    proj[i, kp, 3] = a8 * (x - rx) + a9 * (y - ry) + a10 * (z - rz)
    if ti.static(cpu):  # parallel over faces, the instances of a face in turn (an ndrange divides per item)
        for t in range(F.shape[0]):
            for i in range(inst.shape[0]):
                _raster_face(i, t, V, F, Fp, fid, face_obj, face_ch, face_w, face_bal, inst, cam, ref, proj, L, count, slot_face, slot_depth, balance,
                         status, lin_idx, face_lin, obj_xref, H, W, K, J, store, track, pre, lin, perm, real)
    else:  # a GPU thread per (instance, face)
        for i, t in ti.ndrange(inst.shape[0], F.shape[0]):
            _raster_face(i, t, V, F, Fp, fid, face_obj, face_ch, face_w, face_bal, inst, cam, ref, proj, L, count, slot_face, slot_depth, balance,
                         status, lin_idx, face_lin, obj_xref, H, W, K, J, store, track, pre, lin, perm, real)


@ti.kernel
def fill_unbalanced(
    L: ti.types.ndarray(),  # (I, C, H, W) channel images (read)
    bad: ti.types.ndarray(),  # (I, H, W) uint8: 1 where unbalanced
    out: ti.types.ndarray(),  # (I, C, H, W) corrected channel images
    radius: ti.i32,
):
    """Replace every channel of unbalanced pixels by the nearest balanced neighbour's.

    Neighbours are searched in square rings of growing radius up to ``radius``
    pixels; the first balanced pixel found in the closest ring wins (ties by
    scan order). A pixel with no balanced neighbour within ``radius`` gets 0.
    """
    C = L.shape[1]
    H = L.shape[2]
    W = L.shape[3]
    for i, r, c in ti.ndrange(L.shape[0], H, W):
        if bad[i, r, c] == 0:
            for ch in range(C):
                out[i, ch, r, c] = L[i, ch, r, c]
        else:
            rr_ = -1
            cc_ = -1
            for rad in range(1, radius + 1):
                if rr_ < 0:
                    for dr in range(-rad, rad + 1):
                        for dc in range(-rad, rad + 1):
                            if rr_ < 0 and (ti.abs(dr) == rad or ti.abs(dc) == rad):
                                rr = r + dr
                                cc = c + dc
                                if 0 <= rr < H and 0 <= cc < W:
                                    if bad[i, rr, cc] == 0:
                                        rr_ = rr
                                        cc_ = cc
            for ch in range(C):
                if rr_ >= 0:
                    out[i, ch, r, c] = L[i, ch, rr_, cc_]
                else:
                    out[i, ch, r, c] = 0


@ti.func
def _depth_grad(V: ti.template(), vs, F: ti.template(), f, cam: ti.template(), cm, dx, dy, dz, g, real: ti.template()):
    """g * d(signed depth)/d(vertices of face f) for the ray d, as three 3-vectors.

    With the hit point x = s + t d/|d| at barycentric coordinates (b0, b1, b2),
    d(t)/d(v_i) = b_i n / (n . d/|d|); the signed depth multiplies this by
    sign(n . d), so d(signed depth)/d(v_i) = b_i n / |n . d/|d||.
    """
    i0 = F[f, 0]
    i1 = F[f, 1]
    i2 = F[f, 2]
    p0 = ti.Vector([V[vs, i0, 0], V[vs, i0, 1], V[vs, i0, 2]], dt=real)
    p1 = ti.Vector([V[vs, i1, 0], V[vs, i1, 1], V[vs, i1, 2]], dt=real)
    p2 = ti.Vector([V[vs, i2, 0], V[vs, i2, 1], V[vs, i2, 2]], dt=real)
    s = ti.Vector([cam[cm, 21], cam[cm, 22], cam[cm, 23]], dt=real)
    d = ti.Vector([dx, dy, dz], dt=real)
    d = d / d.norm()
    n = (p1 - p0).cross(p2 - p0)
    nd = n.dot(d)
    t = n.dot(p0 - s) / nd
    x = s + t * d
    n2 = n.dot(n)
    b0 = n.dot((p1 - x).cross(p2 - x)) / n2
    b1 = n.dot((p2 - x).cross(p0 - x)) / n2
    b2 = 1 - b0 - b1
    scale = g / ti.abs(nd)
    return scale * b0 * n, scale * b1 * n, scale * b2 * n


@ti.func
def _signed_depth(V: ti.template(), vs, F: ti.template(), f, cam: ti.template(), cm, dx, dy, dz, real: ti.template()):
    """Signed distance along the ray d from the source to face f's plane (+ where the ray leaves)."""
    i0 = F[f, 0]
    p0 = ti.Vector([V[vs, i0, 0], V[vs, i0, 1], V[vs, i0, 2]], dt=real)
    p1 = ti.Vector([V[vs, F[f, 1], 0], V[vs, F[f, 1], 1], V[vs, F[f, 1], 2]], dt=real)
    p2 = ti.Vector([V[vs, F[f, 2], 0], V[vs, F[f, 2], 1], V[vs, F[f, 2], 2]], dt=real)
    s = ti.Vector([cam[cm, 21], cam[cm, 22], cam[cm, 23]], dt=real)
    d = ti.Vector([dx, dy, dz], dt=real)
    d = d / d.norm()
    n = (p1 - p0).cross(p2 - p0)
    nd = n.dot(d)
    t = n.dot(p0 - s) / nd
    if nd < 0:
        t = -t
    return t


@ti.kernel
def raster_backward(
    V: ti.types.ndarray(),  # (S, N, 3)
    F: ti.types.ndarray(),  # (M, 3) int32
    face_ch: ti.types.ndarray(),  # (M, J) int32
    face_w: ti.types.ndarray(),  # (M, J)
    inst: ti.types.ndarray(),  # (I, 2) int32
    cam: ti.types.ndarray(),  # (n_cams, CAM_WIDTH)
    ref: ti.types.ndarray(),  # (I, 4) reference point and depth per instance (as in the forward pass)
    count: ti.types.ndarray(),  # (I, H, W) int32
    slot_face: ti.types.ndarray(),  # (I, H, W, K) int32
    slot_depth: ti.types.ndarray(),  # (I, H, W, K)
    flags: ti.types.ndarray(),  # (I, H, W) uint8, nonzero = no gradient
    grad_L: ti.types.ndarray(),  # (I, C, H, W)
    grad_sd: ti.types.ndarray(),  # (I, H, W, K) extra gradient per slot depth; read when with_sd != 0
    grad_V: ti.types.ndarray(),  # (S, N, 3), accumulated
    grad_w: ti.types.ndarray(),  # (M, J), accumulated when with_w != 0
    face_obj: ti.types.ndarray(),  # (M,) int32
    lin_idx: ti.types.ndarray(),  # (M,) int32 (see raster_forward); read when lin != 0
    face_lin: ti.types.ndarray(),  # (S, ML, J, 4)
    obj_xref: ti.types.ndarray(),  # (S, P, 3)
    grad_lin: ti.types.ndarray(),  # (S, ML, J, 4), accumulated when lin and with_w
    grad_xref: ti.types.ndarray(),  # (S, P, 3), accumulated when lin and with_w
    J: ti.template(),
    with_sd: ti.template(),
    with_w: ti.template(),
    lin: ti.template(),
    real: ti.template(),
):
    """Backward through the saved slots (pixel-parallel, atomic on vertices).

    For every slot (face f, signed depth sd) of a pixel: g = sum_j face_w[f, j] *
    grad_L[face_ch[f, j]] (+ grad_sd of the slot), pushed through the exact ray-plane
    depth to the face's three vertices; optionally grad_w[f, j] += grad_L[ch] * sd.
    """
    H = count.shape[1]
    W = count.shape[2]
    K = slot_face.shape[3]
    for i, r, c in ti.ndrange(inst.shape[0], H, W):
        n = ti.min(count[i, r, c], K)
        if n > 0 and flags[i, r, c] == 0:
            vs = inst[i, 0]
            cm = inst[i, 1]
            dx, dy, dz = _ray(cam, cm, ti.cast(c, real), ti.cast(r, real))
            dl = ti.sqrt(dx * dx + dy * dy + dz * dz)
            for k in range(n):
                f = slot_face[i, r, c, k]
                g = ti.cast(0, real)
                li = -1
                if ti.static(lin):
                    li = lin_idx[f]
                if li < 0:
                    for j in ti.static(range(J)):
                        ch = face_ch[f, j]
                        if ch >= 0:
                            gl = ti.cast(grad_L[i, ch, r, c], real)
                            g += face_w[f, j] * gl
                            if ti.static(with_w):
                                sdr = _relative(ti.cast(slot_depth[i, r, c, k], real), ref[i, 3], dl)
                                ti.atomic_add(grad_w[f, j], gl * sdr)
                else:
                    sd = ti.cast(slot_depth[i, r, c, k], real)
                    sg = ti.cast(1, real)
                    if sd < 0:
                        sg = -sg
                    tau = sg * _relative(sd, ref[i, 3], dl)
                    o = face_obj[f]
                    for j in ti.static(range(J)):
                        ch = face_ch[f, j]
                        if ch >= 0:
                            gl = ti.cast(grad_L[i, ch, r, c], real)
                            al, be = _affine(face_lin, obj_xref, vs, li, j, o, cam, cm, ref, i, dx, dy, dz, dl, real)
                            g += gl * (al + tau * be)  # d(contribution)/d(signed depth): the jump at the crossing
                            if ti.static(with_w):
                                # d/dc = sign tau; d/d(dg) = sign (tau (x0 - x_ref) + tau^2 d^ / 2); d/dx_ref = -sign tau dg
                                w0 = ref[i, 3]
                                q = ti.Vector([cam[cm, 21] - obj_xref[vs, o, 0] + w0 * dx,
                                               cam[cm, 22] - obj_xref[vs, o, 1] + w0 * dy,
                                               cam[cm, 23] - obj_xref[vs, o, 2] + w0 * dz])
                                dh = ti.Vector([dx, dy, dz]) / dl
                                a = gl * sg * tau
                                ti.atomic_add(grad_lin[vs, li, j, 0], a)
                                for e in ti.static(range(3)):
                                    ti.atomic_add(grad_lin[vs, li, j, 1 + e], a * (q[e] + 0.5 * tau * dh[e]))
                                    ti.atomic_add(grad_xref[vs, o, e], -a * ti.cast(face_lin[vs, li, j, 1 + e], real))
                if ti.static(with_sd):
                    g += ti.cast(grad_sd[i, r, c, k], real)
                if g != 0:
                    g0, g1, g2 = _depth_grad(V, vs, F, f, cam, cm, dx, dy, dz, g, real)
                    for q in ti.static(range(3)):
                        ti.atomic_add(grad_V[vs, F[f, 0], q], g0[q])
                        ti.atomic_add(grad_V[vs, F[f, 1], q], g1[q])
                        ti.atomic_add(grad_V[vs, F[f, 2], q], g2[q])


@ti.kernel
def raster_backward_faces(
    V: ti.types.ndarray(),  # (S, N, 3)
    F: ti.types.ndarray(),  # (M, 3) int32
    face_ch: ti.types.ndarray(),  # (M, J) int32
    face_w: ti.types.ndarray(),  # (M, J)
    inst: ti.types.ndarray(),  # (I, 2) int32
    cam: ti.types.ndarray(),  # (n_cams, CAM_WIDTH)
    ref: ti.types.ndarray(),  # (I, 4) reference point and depth per instance
    flags: ti.types.ndarray(),  # (I, H, W) uint8, nonzero = no gradient
    grad_L: ti.types.ndarray(),  # (I, C, H, W)
    grad_F: ti.types.ndarray(),  # (I, M, 3, 3): gradient of each face's three corners per instance
    grad_wF: ti.types.ndarray(),  # (I, M, J): gradient of each face's weights per instance; when with_w != 0
    J: ti.template(),
    with_w: ti.template(),
    real: ti.template(),
):
    """Deterministic backward, face-parallel: every face revisits the pixels it covers
    (the same coverage test as the forward pass) in a fixed order; no atomics."""
    H = grad_L.shape[2]
    W = grad_L.shape[3]
    for i, f in ti.ndrange(inst.shape[0], F.shape[0]):
        vs = inst[i, 0]
        cm = inst[i, 1]
        i0 = F[f, 0]
        i1 = F[f, 1]
        i2 = F[f, 2]
        acc0 = ti.Vector([0, 0, 0], dt=real)
        acc1 = ti.Vector([0, 0, 0], dt=real)
        acc2 = ti.Vector([0, 0, 0], dt=real)
        accw = ti.Vector([ti.cast(0, real) for _ in ti.static(range(J))])
        u0, v0, w0 = _project(V, vs, i0, cam, cm, real)
        u1, v1, w1 = _project(V, vs, i1, cam, cm, real)
        u2, v2, w2 = _project(V, vs, i2, cam, cm, real)
        if w0 > 0 and w1 > 0 and w2 > 0:
            p0 = ti.Vector([u0, v0])
            p1 = ti.Vector([u1, v1])
            p2 = ti.Vector([u2, v2])
            c0, c1, r0, r1 = _bounds(p0, p1, p2, H, W)
            q0, q1, q2 = _sort3(i0, i1, i2, p0, p1, p2)  # as the forward pass's rows
            s, ax0, ay0, dx0, dy0, ax1, ay1, dx1, dy1, ax2, ay2, dx2, dy2 = _face_edges(q0, q1, q2, real)
            if c0 <= c1 and r0 <= r1 and s != 0:
                for r in range(r0, r1 + 1):
                    for c in range(c0, c1 + 1):
                        px = ti.cast(c, real)
                        py = ti.cast(r, real)
                        g = ti.cast(0, real)
                        for j in ti.static(range(J)):
                            ch = face_ch[f, j]
                            if ch >= 0:
                                g += face_w[f, j] * ti.cast(grad_L[i, ch, r, c], real)
                        if (flags[i, r, c] == 0 and g != 0
                                and _covers(_edge_value(ax0, ay0, dx0, dy0, s, px, py),
                                            _edge_value(ax1, ay1, dx1, dy1, -s, px, py),
                                            _edge_value(ax2, ay2, dx2, dy2, s, px, py), s, dx0, dy0, dx1, dy1, dx2, dy2)):
                            dx, dy, dz = _ray(cam, cm, px, py)
                            g0, g1, g2 = _depth_grad(V, vs, F, f, cam, cm, dx, dy, dz, g, real)
                            acc0 += g0
                            acc1 += g1
                            acc2 += g2
                            if ti.static(with_w):
                                sd = _relative(_signed_depth(V, vs, F, f, cam, cm, dx, dy, dz, real), ref[i, 3],
                                               ti.sqrt(dx * dx + dy * dy + dz * dz))
                                for j in ti.static(range(J)):
                                    ch = face_ch[f, j]
                                    if ch >= 0:
                                        accw[j] += ti.cast(grad_L[i, ch, r, c], real) * sd
        for q in ti.static(range(3)):
            grad_F[i, f, 0, q] = acc0[q]
            grad_F[i, f, 1, q] = acc1[q]
            grad_F[i, f, 2, q] = acc2[q]
        if ti.static(with_w):
            for j in ti.static(range(J)):
                grad_wF[i, f, j] = accw[j]


@ti.kernel
def gather_vertex_grad(
    ptr: ti.types.ndarray(),  # (N + 1,) int32 CSR offsets into corners
    corners: ti.types.ndarray(),  # (3M,) int32: face * 3 + corner, grouped by vertex in a fixed order
    inst: ti.types.ndarray(),  # (I, 2) int32
    grad_F: ti.types.ndarray(),  # (I, M, 3, 3)
    grad_V: ti.types.ndarray(),  # (S, N, 3), accumulated
):
    """grad_V[s, v] += sum of its corners' gradients over the instances of vertex set s,
    summed in a fixed order (deterministic)."""
    for s, v in ti.ndrange(grad_V.shape[0], grad_V.shape[1]):
        for q in ti.static(range(3)):
            acc = grad_F[0, 0, 0, 0] * 0
            for i in range(inst.shape[0]):
                if inst[i, 0] == s:
                    for j in range(ptr[v], ptr[v + 1]):
                        k = corners[j]
                        acc += grad_F[i, k // 3, k % 3, q]
            grad_V[s, v, q] += acc


@ti.kernel
def sum_slots_sorted(
    count: ti.types.ndarray(),  # (I, H, W) int32
    slot_face: ti.types.ndarray(),  # (I, H, W, K) int32, sorted in place
    slot_depth: ti.types.ndarray(),  # (I, H, W, K), sorted in place
    face_ch: ti.types.ndarray(),  # (M, J) int32
    face_w: ti.types.ndarray(),  # (M, J)
    inst: ti.types.ndarray(),  # (I, 2) int32
    cam: ti.types.ndarray(),  # (n_cams, CAM_WIDTH)
    ref: ti.types.ndarray(),  # (I, 4) reference point and depth per instance
    L: ti.types.ndarray(),  # (I, C, H, W), overwritten
    J: ti.template(),
    real: ti.template(),
):
    """Deterministic channel images: sort each pixel's slots by face id, then sum in that order."""
    for i, r, c in ti.ndrange(count.shape[0], count.shape[1], count.shape[2]):
        n = ti.min(count[i, r, c], slot_face.shape[3])
        for a in range(1, n):  # insertion sort (K is small)
            fa = slot_face[i, r, c, a]
            da = slot_depth[i, r, c, a]
            b = a - 1
            while b >= 0 and slot_face[i, r, c, b] > fa:
                slot_face[i, r, c, b + 1] = slot_face[i, r, c, b]
                slot_depth[i, r, c, b + 1] = slot_depth[i, r, c, b]
                b -= 1
            slot_face[i, r, c, b + 1] = fa
            slot_depth[i, r, c, b + 1] = da
        for ch in range(L.shape[1]):
            L[i, ch, r, c] = 0
        dx, dy, dz = _ray(cam, inst[i, 1], ti.cast(c, real), ti.cast(r, real))
        dl = ti.sqrt(dx * dx + dy * dy + dz * dz)
        for a in range(n):
            f = slot_face[i, r, c, a]
            sdr = _relative(slot_depth[i, r, c, a], ref[i, 3], dl)
            for j in ti.static(range(J)):
                ch = face_ch[f, j]
                if ch >= 0:
                    L[i, ch, r, c] += face_w[f, j] * sdr


MAX_NEST = 32  # deepest nesting the overlap check follows along one ray


@ti.kernel
def check_nesting(
    count: ti.types.ndarray(),  # (I, H, W) int32
    slot_face: ti.types.ndarray(),  # (I, H, W, K) int32, sorted in place by depth
    slot_depth: ti.types.ndarray(),  # (I, H, W, K), sorted in place
    face_obj: ti.types.ndarray(),  # (M,) int32
    face_skip: ti.types.ndarray(),  # (M,) int32, 1 = not a surface of its object (between two tetrahedra)
    parent: ti.types.ndarray(),  # (P,) int32, -1 = top level
    level: ti.types.ndarray(),  # (P,) int32 depth in the object tree (top level = 0)
    conflicts: ti.types.ndarray(),  # (P, P) int32, accumulated: [a, b] pixels where a conflicts with b
    tol: ti.f64,
):
    """Walk each ray's crossings in depth order and find objects that break the nesting.

    Along a ray the objects the ray is inside must form a chain of the object tree
    (each the parent of the next). Entering object o is valid when the innermost open
    object is o's parent (or nothing is open and o is top level). Otherwise
    ``conflicts[o, b] += 1`` with b = o when o is already open (o overlaps itself:
    intersecting parts), ``conflicts[x, o]`` when the innermost open object x is a
    descendant of o (x reaches beyond its ancestor o), b = parent(o) when o's parent is
    not open (o extends outside its parent), else b = the innermost open object (o
    overlaps b). Leaving o while an object x inside it is still open gives
    ``conflicts[x, o]`` (x reaches beyond o).
    Each pair counts once per pixel (consecutive repeats are merged). Crossings closer
    than ``tol`` mm are ordered as touching surfaces should be: an object is left before
    another is entered, outer objects are entered first and left last (the crossings of
    one object keep their exact order: thin chords and creases; an exit and an entry of one
    object within tol that contradict what is open are a graze whose depths rounded the wrong
    way round, and are skipped together).
    """
    K = slot_face.shape[3]
    for i, r, c in ti.ndrange(count.shape[0], count.shape[1], count.shape[2]):
        n = ti.min(count[i, r, c], K)
        # insertion sort by (depth, rule for touching surfaces)
        for a in range(1, n):
            fa = slot_face[i, r, c, a]
            da = slot_depth[i, r, c, a]
            b = a - 1
            moving = 1
            while b >= 0 and moving == 1:
                db = slot_depth[i, r, c, b]
                ta = ti.abs(da)
                tb = ti.abs(db)
                before = 0  # does a come before b?
                if ta < tb - tol:
                    before = 1
                elif ta <= tb + tol:
                    oa = face_obj[fa]
                    ob = face_obj[slot_face[i, r, c, b]]
                    la = level[oa]
                    lb = level[ob]
                    ea = da < 0  # a is an entry
                    eb = db < 0
                    if ea != eb:
                        if oa == ob:
                            before = ta < tb  # one object (thin chord or crease): its own depth order
                        else:
                            before = eb and not ea  # touching objects: one is left before the next is entered
                    elif ea:
                        before = la < lb  # entries: outer first
                    else:
                        before = la > lb  # exits: inner first
                if before == 1:
                    slot_face[i, r, c, b + 1] = slot_face[i, r, c, b]
                    slot_depth[i, r, c, b + 1] = db
                    b -= 1
                else:
                    moving = 0
            slot_face[i, r, c, b + 1] = fa
            slot_depth[i, r, c, b + 1] = da
        stack = ti.Vector.zero(ti.i32, MAX_NEST)
        top = 0
        last_a = -1
        last_b = -1
        skip_next = 0
        for a in range(n):
            o = face_obj[slot_face[i, r, c, a]]
            if face_skip[slot_face[i, r, c, a]] != 0 or skip_next == 1:
                skip_next = 0
                continue
            # a crossing that contradicts the state (o entered while open, or left while not open) next to
            # the opposite crossing of o within tol is a graze of a fold whose two depths rounded the
            # wrong way round: neither changes what is open
            if a + 1 < n and face_obj[slot_face[i, r, c, a + 1]] == o and face_skip[slot_face[i, r, c, a + 1]] == 0:
                d0 = slot_depth[i, r, c, a]
                d1 = slot_depth[i, r, c, a + 1]
                if (d0 < 0) != (d1 < 0) and ti.abs(ti.abs(d0) - ti.abs(d1)) <= tol:
                    is_open = 0
                    for q in range(top):
                        if stack[q] == o:
                            is_open = 1
                    if (d0 < 0 and is_open == 1) or (d0 > 0 and is_open == 0):
                        skip_next = 1
                        continue
            if slot_depth[i, r, c, a] < 0:  # entry
                inner = -1
                if top > 0:
                    inner = stack[top - 1]
                if inner != parent[o]:
                    self_open = 0
                    par_open = 0
                    for q in range(top):
                        if stack[q] == o:
                            self_open = 1
                        if stack[q] == parent[o]:
                            par_open = 1
                    # is o an ancestor of the innermost open object? then that one reaches beyond o
                    anc = 0
                    q = parent[inner] if inner >= 0 else -1
                    for _ in range(MAX_NEST):
                        if q >= 0:
                            if q == o:
                                anc = 1
                            q = parent[q]
                    who = o
                    bad = inner
                    if self_open == 1:
                        bad = o
                    elif anc == 1:
                        who = inner
                        bad = o
                    elif parent[o] >= 0 and par_open == 0:
                        bad = parent[o]
                    if not (bad == last_b and who == last_a):
                        ti.atomic_add(conflicts[who, bad], 1)
                        last_a = who
                        last_b = bad
                if top < MAX_NEST:
                    stack[top] = o
                    top += 1
            else:  # exit: remove the innermost occurrence of o
                pos = -1
                for q in range(top):
                    if stack[q] == o:
                        pos = q
                if pos >= 0 and pos != top - 1:
                    # o is left while something inside it is still open: that object reaches
                    # beyond o (beyond its parent when o is its parent)
                    inner = stack[top - 1]
                    if not (o == last_b and inner == last_a):
                        ti.atomic_add(conflicts[inner, o], 1)
                        last_a = inner
                        last_b = o
                if pos >= 0:
                    for q in range(pos, top - 1):
                        stack[q] = stack[q + 1]
                    top -= 1
