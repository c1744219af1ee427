"""Taichi kernels of a registration loss, differentiated by Taichi's autodiff (``ti.ad.Tape``).

With :meth:`taichi_xray.pipeline.Pipeline.taichi_forward` they make a whole
forward written in Taichi -- pose, rasterization, Beer-Lambert, line
integral, NGC -- whose gradient ``ti.ad.Tape`` computes without torch's
autograd (:class:`taichi_xray.fit.taichi_fit.TaichiPoseLoss`). Outputs are
accumulated with ``+=`` into zeroed arrays (Taichi 1.7's reverse mode was seen
to return wrong gradients for some plain stores after loops) and no local is
carried through a dynamic loop.

NGC (Penney et al. 1998) between images a and b: Sobel gradients gx, gy of
both; NGC = (NCC(gx_a, gx_b) + NCC(gy_a, gy_b)) / 2 over the interior pixels
(a one-pixel border is left out), with NCC(x, y) = cov(x, y) / sqrt(var x var y)
from the five sums of x, y, x^2, y^2, xy (optionally weighted by a mask).
"""
import taichi as ti


@ti.kernel
def rigid_pose(
    template: ti.types.ndarray(),  # (N, 3) vertices, mm
    params: ti.types.ndarray(),  # (6,) rotation vector (degrees) and translation (mm)
    centre: ti.types.ndarray(),  # (3,) rotation centre, mm
    moving: ti.types.ndarray(),  # (N,) 1 where the vertex moves, 0 where it stays
    V: ti.types.ndarray(),  # (1, N, 3) posed vertices, accumulated (zero on entry)
    real: ti.template(),  # V's dtype
):
    """V = R(rotvec) (x - c) + c + t for the moving vertices (Rodrigues), x elsewhere."""
    for k in range(template.shape[0]):
        deg = 3.141592653589793 / 180.0
        rx = params[0] * deg
        ry = params[1] * deg
        rz = params[2] * deg
        th2 = rx * rx + ry * ry + rz * rz
        # sin(th)/th and (1 - cos th)/th^2 by their series near 0 (stable values and gradients)
        a = 1.0 - th2 / 6.0 + th2 * th2 / 120.0
        b = 0.5 - th2 / 24.0 + th2 * th2 / 720.0
        if th2 > 1e-4:
            th = ti.sqrt(th2)
            a = ti.sin(th) / th
            b = (1.0 - ti.cos(th)) / th2
        x = template[k, 0] - centre[0]
        y = template[k, 1] - centre[1]
        z = template[k, 2] - centre[2]
        # R p = p + a (r x p) + b (r x (r x p))
        cx = ry * z - rz * y
        cy = rz * x - rx * z
        cz = rx * y - ry * x
        ccx = ry * cz - rz * cy
        ccy = rz * cx - rx * cz
        ccz = rx * cy - ry * cx
        m = moving[k]
        V[0, k, 0] += ti.cast(template[k, 0] + m * (a * cx + b * ccx + params[3]), real)
        V[0, k, 1] += ti.cast(template[k, 1] + m * (a * cy + b * ccy + params[4]), real)
        V[0, k, 2] += ti.cast(template[k, 2] + m * (a * cz + b * ccz + params[5]), real)


@ti.kernel
def line_integral(
    intensity: ti.types.ndarray(),  # (B, I, H, W) detector signal
    I0: ti.f64,
    out: ti.types.ndarray(),  # (I, H, W) -ln(I / I0), accumulated (zero on entry)
):
    for i, r, c in ti.ndrange(out.shape[0], out.shape[1], out.shape[2]):
        out[i, r, c] += -ti.log(ti.cast(intensity[0, i, r, c], ti.f64) / I0)


@ti.kernel
def sobel(
    img: ti.types.ndarray(),  # (I, H, W)
    gx: ti.types.ndarray(),  # (I, H, W), accumulated (zero on entry); borders stay 0
    gy: ti.types.ndarray(),
):
    for i, r, c in ti.ndrange(img.shape[0], img.shape[1], img.shape[2]):
        if 0 < r < img.shape[1] - 1 and 0 < c < img.shape[2] - 1:
            gx[i, r, c] += ((img[i, r - 1, c + 1] + 2 * img[i, r, c + 1] + img[i, r + 1, c + 1])
                            - (img[i, r - 1, c - 1] + 2 * img[i, r, c - 1] + img[i, r + 1, c - 1]))
            gy[i, r, c] += ((img[i, r + 1, c - 1] + 2 * img[i, r + 1, c] + img[i, r + 1, c + 1])
                            - (img[i, r - 1, c - 1] + 2 * img[i, r - 1, c] + img[i, r - 1, c + 1]))


@ti.kernel
def moments(
    ax: ti.types.ndarray(),  # (I, H, W) gradient images of a
    ay: ti.types.ndarray(),
    bx: ti.types.ndarray(),  # (I, H, W) gradient images of b
    by: ti.types.ndarray(),
    mask: ti.types.ndarray(),  # (I, H, W) non-negative weights
    sums: ti.types.ndarray(),  # (I, 2, 6) accumulated: w, sum x, sum y, sum x^2, sum y^2, sum xy
):
    for i, r, c in ti.ndrange(ax.shape[0], ax.shape[1], ax.shape[2]):
        if 0 < r < ax.shape[1] - 1 and 0 < c < ax.shape[2] - 1:
            m = mask[i, r, c]
            for d in ti.static(range(2)):
                x = ax[i, r, c]
                y = bx[i, r, c]
                if ti.static(d == 1):
                    x = ay[i, r, c]
                    y = by[i, r, c]
                sums[i, d, 0] += m
                sums[i, d, 1] += m * x
                sums[i, d, 2] += m * y
                sums[i, d, 3] += m * x * x
                sums[i, d, 4] += m * y * y
                sums[i, d, 5] += m * x * y


@ti.kernel
def ngc_loss(
    sums: ti.types.ndarray(),  # (I, 2, 6) from moments
    loss: ti.types.ndarray(),  # (1,) accumulated: 1 - mean over images of NGC
):
    for i in range(sums.shape[0]):
        for d in ti.static(range(2)):
            n = sums[i, d, 0]
            cov = sums[i, d, 5] - sums[i, d, 1] * sums[i, d, 2] / n
            vx = sums[i, d, 3] - sums[i, d, 1] * sums[i, d, 1] / n
            vy = sums[i, d, 4] - sums[i, d, 2] * sums[i, d, 2] / n
            loss[0] += (1.0 - cov / ti.sqrt(vx * vy + 1e-30)) / (2.0 * sums.shape[0])
