"""Taichi kernels of the path-length rasterizer: forward (one fused launch) and backward.

Every kernel takes its arrays as ``ti.types.ndarray()`` (numpy arrays, torch
tensors or Taichi ndarrays, on any device Taichi can read) and a ``real``
template argument (``ti.f32`` or ``ti.f64``) that fixes the precision of the
arithmetic; kernels are compiled once per precision, never per call.

Geometry of one face, for one pixel (u, v) = (c, r):

* coverage: edge functions of the projected triangle, evaluated so that an
  edge shared by two faces gives values of exactly opposite sign in both
  (each edge is evaluated from its lower vertex index to its higher one and
  negated when the face runs the other way), and a top-left tie-break for
  pixel centres exactly on an edge or vertex. A closed mesh therefore covers
  every pixel the same number of times from the front as from the back.
* depth: exact distance from the source along the pixel's ray to the face's
  plane, ``t = n.(v0 - s) / n.d`` with ``d = M^-1 (u, v, 1)``; the signed
  depth is ``+t|d|`` where the ray leaves the mesh (``n.d > 0``) and
  ``-t|d|`` where it enters, so the signed depths of a pixel sum to its path
  length.
"""

import taichi as ti

# Status codes written into ``status[0..]`` by the face kernel.
ST_BEHIND = 0  # faces entirely behind the source plane (culled)
ST_STRADDLE = 1  # faces crossing the source plane (not rasterized; the caller raises)
ST_EDGE_ON = 2  # faces seen exactly edge-on (zero projected area; they cover nothing)
ST_MAX_COUNT = 3  # largest per-pixel coverage count (for K overflow)
ST_UNBALANCED = 4  # status[4 + p]: unbalanced pixels of mesh p


@ti.kernel
def project_vertices(
    V: ti.types.ndarray(),  # (N, 3) world mm
    cam: ti.types.ndarray(),  # (3, 4) projection matrix
    out: ti.types.ndarray(),  # (N, 3): u, v, w
    real: ti.template(),
):
    for i in range(V.shape[0]):
        x = ti.cast(V[i, 0], real)
        y = ti.cast(V[i, 1], real)
        z = ti.cast(V[i, 2], real)
        h0 = cam[0, 0] * x + cam[0, 1] * y + cam[0, 2] * z + cam[0, 3]
        h1 = cam[1, 0] * x + cam[1, 1] * y + cam[1, 2] * z + cam[1, 3]
        w = cam[2, 0] * x + cam[2, 1] * y + cam[2, 2] * z + cam[2, 3]
        out[i, 0] = h0 / w
        out[i, 1] = h1 / w
        out[i, 2] = w


@ti.func
def _setup(i0, i1, i2, proj: ti.template(), H, W, real: ti.template()):
    """Cull and bound one projected face.

    Returns (state, s, c0, c1, r0, r1): state 0 = rasterize, 1 = behind the
    source, 2 = straddles the source plane, 3 = edge-on, 4 = off the detector;
    s = +-1 orients the edge functions so that the inside is positive.
    """
    state = 0
    s = ti.cast(1, real)
    c0, c1, r0, r1 = 0, -1, 0, -1
    w0 = proj[i0, 2]
    w1 = proj[i1, 2]
    w2 = proj[i2, 2]
    if w0 <= 0 and w1 <= 0 and w2 <= 0:
        state = 1
    elif w0 <= 0 or w1 <= 0 or w2 <= 0:
        state = 2
    else:
        # orientation of the projected triangle, from the canonical edge function
        ax, ay, dx, dy, k, _ = _edge_setup(i1, i2, ti.cast(1, real), proj)
        a2 = _edge_value(ax, ay, dx, dy, k, proj[i0, 0], proj[i0, 1])
        if a2 == 0:
            state = 3
        else:
            if a2 < 0:
                s = -s
            umin = ti.min(proj[i0, 0], proj[i1, 0], proj[i2, 0])
            umax = ti.max(proj[i0, 0], proj[i1, 0], proj[i2, 0])
            vmin = ti.min(proj[i0, 1], proj[i1, 1], proj[i2, 1])
            vmax = ti.max(proj[i0, 1], proj[i1, 1], proj[i2, 1])
            c0 = ti.max(ti.cast(ti.ceil(umin), ti.i32), 0)
            c1 = ti.min(ti.cast(ti.floor(umax), ti.i32), W - 1)
            r0 = ti.max(ti.cast(ti.ceil(vmin), ti.i32), 0)
            r1 = ti.min(ti.cast(ti.floor(vmax), ti.i32), H - 1)
            if c0 > c1 or r0 > r1:
                state = 4
    return state, s, c0, c1, r0, r1


@ti.func
def _edge_setup(ia, ib, s, proj: ti.template()):
    """Per-face constants of the directed edge ia -> ib, hoisted out of the pixel loop.

    Returns (ax, ay, dx, dy, k, tl): the canonical edge (from the lower vertex index
    to the higher), the factor k = +-s that turns its value into this face's
    inside-positive value, and whether the edge is top-left for this face. The
    per-pixel value ``k * (dx * (py - ay) - dy * (px - ax))`` is computed from the same
    canonical operands by both faces of an edge, so they see exactly opposite values.
    """
    lo = ti.min(ia, ib)
    hi = ti.max(ia, ib)
    ax = proj[lo, 0]
    ay = proj[lo, 1]
    dx = proj[hi, 0] - ax
    dy = proj[hi, 1] - ay
    k = s
    if lo != ia:
        k = -s
    tdx = k * dx  # direction of the edge as this face runs it (inside on the left)
    tdy = k * dy
    tl = 0
    if tdy > 0 or (tdy == 0 and tdx < 0):
        tl = 1
    return ax, ay, dx, dy, k, tl


@ti.func
def _edge_value(ax, ay, dx, dy, k, px, py):
    """The edge function at (px, py), same arithmetic for both faces of an edge."""
    return k * (dx * (py - ay) - dy * (px - ax))


@ti.func
def _edge_in(ax, ay, dx, dy, k, tl, px, py) -> ti.i32:
    e = _edge_value(ax, ay, dx, dy, k, px, py)
    return (e > 0) or (e == 0 and tl == 1)


@ti.func
def _ray(minv: ti.template(), px, py):
    dx = minv[0, 0] * px + minv[0, 1] * py + minv[0, 2]
    dy = minv[1, 0] * px + minv[1, 1] * py + minv[1, 2]
    dz = minv[2, 0] * px + minv[2, 1] * py + minv[2, 2]
    return dx, dy, dz


@ti.kernel
def rasterize_faces(
    V: ti.types.ndarray(),  # (N, 3) world mm
    F: ti.types.ndarray(),  # (M, 3) int32
    face_mesh: ti.types.ndarray(),  # (M,) int32 mesh id of every face
    cam: ti.types.ndarray(),  # (3, 4) projection matrix
    proj: ti.types.ndarray(),  # (N, 3) scratch: u, v, w of every vertex
    src: ti.types.ndarray(),  # (3,) source position
    minv: ti.types.ndarray(),  # (3, 3) inverse of P[:, :3]
    L: ti.types.ndarray(),  # (P, H, W) path lengths, accumulated
    balance: ti.types.ndarray(),  # (P, H, W) int32, sum of signs (0 when balanced)
    count: ti.types.ndarray(),  # (H, W) int32, number of covering faces
    slot_face: ti.types.ndarray(),  # (H, W, K) int32
    slot_depth: ti.types.ndarray(),  # (H, W, K) signed depths
    status: ti.types.ndarray(),  # (4 + P,) int32
    K: ti.i32,
    store: ti.i32,
    real: ti.template(),
):
    """Project the vertices and rasterize the faces in one launch (a Taichi kernel launch
    costs ~0.2 ms on the CPU); the top-level loops run in order. L, balance and count must
    be zero on entry (the caller clears them with memset-speed library calls: a Taichi loop
    over the image was ~10x slower on the CPU)."""
    H = L.shape[1]
    W = L.shape[2]
    for i in range(status.shape[0]):
        status[i] = 0
    for i in range(V.shape[0]):
        x = ti.cast(V[i, 0], real)
        y = ti.cast(V[i, 1], real)
        z = ti.cast(V[i, 2], real)
        w = cam[2, 0] * x + cam[2, 1] * y + cam[2, 2] * z + cam[2, 3]
        proj[i, 0] = (cam[0, 0] * x + cam[0, 1] * y + cam[0, 2] * z + cam[0, 3]) / w
        proj[i, 1] = (cam[1, 0] * x + cam[1, 1] * y + cam[1, 2] * z + cam[1, 3]) / w
        proj[i, 2] = w
    for f in range(F.shape[0]):
        i0 = F[f, 0]
        i1 = F[f, 1]
        i2 = F[f, 2]
        state, s, c0, c1, r0, r1 = _setup(i0, i1, i2, proj, H, W, real)
        if state == 1:
            ti.atomic_add(status[ST_BEHIND], 1)
        elif state == 2:
            ti.atomic_add(status[ST_STRADDLE], 1)
        elif state == 3:
            ti.atomic_add(status[ST_EDGE_ON], 1)
        elif state == 0:
            # plane of the face in world space: n . x = n . v0
            ax = ti.cast(V[i0, 0], real)
            ay = ti.cast(V[i0, 1], real)
            az = ti.cast(V[i0, 2], real)
            e1x = ti.cast(V[i1, 0], real) - ax
            e1y = ti.cast(V[i1, 1], real) - ay
            e1z = ti.cast(V[i1, 2], real) - az
            e2x = ti.cast(V[i2, 0], real) - ax
            e2y = ti.cast(V[i2, 1], real) - ay
            e2z = ti.cast(V[i2, 2], real) - az
            nx = e1y * e2z - e1z * e2y
            ny = e1z * e2x - e1x * e2z
            nz = e1x * e2y - e1y * e2x
            num = nx * (ax - src[0]) + ny * (ay - src[1]) + nz * (az - src[2])
            m = face_mesh[f]
            ax0, ay0, dx0, dy0, k0, tl0 = _edge_setup(i1, i2, s, proj)
            ax1, ay1, dx1, dy1, k1, tl1 = _edge_setup(i2, i0, s, proj)
            ax2, ay2, dx2, dy2, k2, tl2 = _edge_setup(i0, i1, s, proj)
            for r in range(r0, r1 + 1):
                py = ti.cast(r, real)
                for c in range(c0, c1 + 1):
                    px = ti.cast(c, real)
                    if (_edge_in(ax0, ay0, dx0, dy0, k0, tl0, px, py) and _edge_in(ax1, ay1, dx1, dy1, k1, tl1, px, py)
                            and _edge_in(ax2, ay2, dx2, dy2, k2, tl2, px, py)):
                        dx, dy, dz = _ray(minv, px, py)
                        nd = nx * dx + ny * dy + nz * dz
                        depth = num / nd * ti.sqrt(dx * dx + dy * dy + dz * dz)
                        sg = 1
                        if nd < 0:
                            sg = -1
                            depth = -depth
                        ti.atomic_add(L[m, r, c], depth)
                        ti.atomic_add(balance[m, r, c], sg)
                        k = ti.atomic_add(count[r, c], 1)
                        if store != 0 and k < K:
                            slot_face[r, c, k] = f
                            slot_depth[r, c, k] = depth



@ti.kernel
def fill_unbalanced(
    L: ti.types.ndarray(),  # (P, H, W) path lengths (read)
    balance: ti.types.ndarray(),  # (P, H, W) int32
    out: ti.types.ndarray(),  # (P, H, W) corrected path lengths
    flags: ti.types.ndarray(),  # (P, H, W) uint8: 1 where corrected
    radius: ti.i32,
    real: ti.template(),
):
    """Replace the path length of unbalanced pixels by the nearest balanced neighbour's.

    Neighbours are searched in square rings of growing radius up to ``radius``
    pixels; the first balanced pixel found in the closest ring wins (ties by
    scan order). A pixel with no balanced neighbour within ``radius`` gets 0.
    """
    P = L.shape[0]
    H = L.shape[1]
    W = L.shape[2]
    for p, r, c in ti.ndrange(P, H, W):
        if balance[p, r, c] == 0:
            out[p, r, c] = L[p, r, c]
            flags[p, r, c] = 0
        else:
            flags[p, r, c] = 1
            val = ti.cast(0, real)
            found = 0
            for rad in range(1, radius + 1):
                if found == 0:
                    for dr in range(-rad, rad + 1):
                        for dc in range(-rad, rad + 1):
                            if found == 0 and (ti.abs(dr) == rad or ti.abs(dc) == rad):
                                rr = r + dr
                                cc = c + dc
                                if 0 <= rr < H and 0 <= cc < W:
                                    if balance[p, rr, cc] == 0:
                                        val = L[p, rr, cc]
                                        found = 1
            out[p, r, c] = val


@ti.func
def _depth_grad(V: ti.template(), F: ti.template(), f, src: ti.template(), dx, dy, dz, g, real: ti.template()):
    """g * d(signed depth)/d(vertices of face f) for the ray d, as three 3-vectors.

    With the hit point x = s + t d/|d| at barycentric coordinates (b0, b1, b2),
    d(t)/d(v_i) = b_i n / (n . d/|d|); the signed depth multiplies this by
    sign(n . d), so d(signed depth)/d(v_i) = b_i n / |n . d/|d||.
    """
    i0 = F[f, 0]
    i1 = F[f, 1]
    i2 = F[f, 2]
    p0 = ti.Vector([V[i0, 0], V[i0, 1], V[i0, 2]], dt=real)
    p1 = ti.Vector([V[i1, 0], V[i1, 1], V[i1, 2]], dt=real)
    p2 = ti.Vector([V[i2, 0], V[i2, 1], V[i2, 2]], dt=real)
    s = ti.Vector([src[0], src[1], src[2]], dt=real)
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


@ti.kernel
def path_length_backward(
    V: ti.types.ndarray(),  # (N, 3)
    F: ti.types.ndarray(),  # (M, 3) int32
    face_mesh: ti.types.ndarray(),  # (M,) int32
    src: ti.types.ndarray(),  # (3,)
    minv: ti.types.ndarray(),  # (3, 3)
    count: ti.types.ndarray(),  # (H, W) int32
    slot_face: ti.types.ndarray(),  # (H, W, K) int32
    flags: ti.types.ndarray(),  # (P, H, W) int32, nonzero = no gradient
    grad_L: ti.types.ndarray(),  # (P, H, W)
    grad_V: ti.types.ndarray(),  # (N, 3), accumulated
    real: ti.template(),
):
    """Backward of the path length through the saved slots (pixel-parallel, atomic)."""
    H = count.shape[0]
    W = count.shape[1]
    K = slot_face.shape[2]
    for r, c in ti.ndrange(H, W):
        n = ti.min(count[r, c], K)
        if n > 0:
            dx, dy, dz = _ray(minv, ti.cast(c, real), ti.cast(r, real))
            for k in range(n):
                f = slot_face[r, c, k]
                m = face_mesh[f]
                g = ti.cast(grad_L[m, r, c], real)
                if flags[m, r, c] == 0 and g != 0:
                    g0, g1, g2 = _depth_grad(V, F, f, src, dx, dy, dz, g, real)
                    for q in ti.static(range(3)):
                        ti.atomic_add(grad_V[F[f, 0], q], g0[q])
                        ti.atomic_add(grad_V[F[f, 1], q], g1[q])
                        ti.atomic_add(grad_V[F[f, 2], q], g2[q])


@ti.kernel
def path_length_backward_faces(
    V: ti.types.ndarray(),  # (N, 3)
    F: ti.types.ndarray(),  # (M, 3) int32
    face_mesh: ti.types.ndarray(),  # (M,) int32
    proj: ti.types.ndarray(),  # (N, 3) from project_vertices
    src: ti.types.ndarray(),  # (3,)
    minv: ti.types.ndarray(),  # (3, 3)
    flags: ti.types.ndarray(),  # (P, H, W) int32, nonzero = no gradient
    grad_L: ti.types.ndarray(),  # (P, H, W)
    grad_F: ti.types.ndarray(),  # (M, 3, 3): gradient of each face's three corners
    real: ti.template(),
):
    """Deterministic backward, face-parallel: every face revisits the pixels it covers
    (the same coverage test as the forward pass) in a fixed order; no atomics."""
    H = grad_L.shape[1]
    W = grad_L.shape[2]
    for f in range(F.shape[0]):
        i0 = F[f, 0]
        i1 = F[f, 1]
        i2 = F[f, 2]
        acc0 = ti.Vector([0, 0, 0], dt=real)
        acc1 = ti.Vector([0, 0, 0], dt=real)
        acc2 = ti.Vector([0, 0, 0], dt=real)
        state, s, c0, c1, r0, r1 = _setup(i0, i1, i2, proj, H, W, real)
        if state == 0:
            m = face_mesh[f]
            ax0, ay0, dx0, dy0, k0, tl0 = _edge_setup(i1, i2, s, proj)
            ax1, ay1, dx1, dy1, k1, tl1 = _edge_setup(i2, i0, s, proj)
            ax2, ay2, dx2, dy2, k2, tl2 = _edge_setup(i0, i1, s, proj)
            for r in range(r0, r1 + 1):
                for c in range(c0, c1 + 1):
                    px = ti.cast(c, real)
                    py = ti.cast(r, real)
                    g = ti.cast(grad_L[m, r, c], real)
                    if flags[m, r, c] == 0 and g != 0 and _edge_in(ax0, ay0, dx0, dy0, k0, tl0, px, py) and _edge_in(
                            ax1, ay1, dx1, dy1, k1, tl1, px, py) and _edge_in(ax2, ay2, dx2, dy2, k2, tl2, px, py):
                        dx, dy, dz = _ray(minv, px, py)
                        g0, g1, g2 = _depth_grad(V, F, f, src, dx, dy, dz, g, real)
                        acc0 += g0
                        acc1 += g1
                        acc2 += g2
        for q in ti.static(range(3)):
            grad_F[f, 0, q] = acc0[q]
            grad_F[f, 1, q] = acc1[q]
            grad_F[f, 2, q] = acc2[q]


@ti.kernel
def gather_vertex_grad(
    ptr: ti.types.ndarray(),  # (N + 1,) int32 CSR offsets into corners
    corners: ti.types.ndarray(),  # (3M,) int32: face * 3 + corner, grouped by vertex in a fixed order
    grad_F: ti.types.ndarray(),  # (M, 3, 3)
    grad_V: ti.types.ndarray(),  # (N, 3)
):
    """grad_V[v] = sum of its corners' gradients, summed in a fixed order (deterministic)."""
    for v in range(grad_V.shape[0]):
        for q in ti.static(range(3)):
            acc = grad_F[0, 0, 0] * 0
            for j in range(ptr[v], ptr[v + 1]):
                k = corners[j]
                acc += grad_F[k // 3, k % 3, q]
            grad_V[v, q] = acc


@ti.kernel
def sum_slots_sorted(
    count: ti.types.ndarray(),  # (H, W) int32
    slot_face: ti.types.ndarray(),  # (H, W, K) int32, sorted in place
    slot_depth: ti.types.ndarray(),  # (H, W, K), sorted in place
    face_mesh: ti.types.ndarray(),  # (M,) int32
    L: ti.types.ndarray(),  # (P, H, W), overwritten
):
    """Deterministic path lengths: sort each pixel's slots by face id, then sum in that order."""
    for r, c in ti.ndrange(count.shape[0], count.shape[1]):
        n = ti.min(count[r, c], slot_face.shape[2])
        for i in range(1, n):  # insertion sort (K is small)
            fi = slot_face[r, c, i]
            di = slot_depth[r, c, i]
            j = i - 1
            while j >= 0 and slot_face[r, c, j] > fi:
                slot_face[r, c, j + 1] = slot_face[r, c, j]
                slot_depth[r, c, j + 1] = slot_depth[r, c, j]
                j -= 1
            slot_face[r, c, j + 1] = fi
            slot_depth[r, c, j + 1] = di
        for p in range(L.shape[0]):
            L[p, r, c] = 0
        for i in range(n):
            m = face_mesh[slot_face[r, c, i]]
            L[m, r, c] += slot_depth[r, c, i]
