"""Watch a 2D/3D rigid registration converge, live, in a Taichi GGUI window.

A small phantom (soft-tissue ellipsoid "body" holding a bone "spine" box and
two lung spheres) is rendered at a hidden target pose; the pose (rotation
vector in degrees and translation in mm, about the phantom's centre) is then
fitted from the identity by Adam on the NGC loss between the target and the
render.

By default the whole forward -- the rigid pose, the rasterizer, Beer-Lambert,
the line integral, Sobel gradients and NGC -- is Taichi kernels, and its
gradient comes from one ``ti.ad.Tape`` per iteration
(:class:`taichi_xray.fit.taichi_fit.TaichiPoseLoss`: the rasterizer's z-buffer
gradient is registered through ``ti.ad.grad_replaced``; no torch autograd).
``--torch`` runs the same fit through the torch bridge
(:class:`taichi_xray.torch.XRayRenderer` + :func:`taichi_xray.fit.losses.ngc_loss`)
for comparison.

The window shows four panes: target | current render | overlay (target
magenta, current green, grey where they agree) | loss curve, with the
iteration, loss and pose errors in a small panel.

    .venv/bin/python demos/fit_live.py                     # window (Vulkan + display)
    .venv/bin/python demos/fit_live.py --offscreen OUT     # no window: writes fit_NNNN.png every --every steps
    .venv/bin/python demos/fit_live.py --no-window         # text only
    options: --iters 80 --size 96 --seed 0 --arch cpu --torch

Without Vulkan the window modes fall back to text output with a one-line note.
"""
import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from taichi_xray import runtime  # noqa: E402
from taichi_xray.camera import Camera  # noqa: E402
from taichi_xray.fit.losses import ngc_loss  # noqa: E402
from taichi_xray.physics import Spectrum  # noqa: E402
from taichi_xray.pose import rigid_transform  # noqa: E402
from taichi_xray.primitives import box, ellipsoid, icosphere  # noqa: E402
from taichi_xray.torch import XRayRenderer  # noqa: E402


def phantom():
    """(vertices list, faces list, materials, parents) of the small phantom, mm."""
    parts = [
        (ellipsoid((95.0, 65.0, 120.0), n_lat=14, n_lon=28), "soft_tissue", -1),
        (box((28.0, 30.0, 150.0), centre=(0.0, 28.0, 0.0)), "cortical_bone", 0),
        (icosphere(34.0, 2, centre=(-45.0, -5.0, 25.0)), "lung", 0),
        (icosphere(32.0, 2, centre=(45.0, -5.0, 35.0)), "lung", 0),
        (box((60.0, 12.0, 12.0), centre=(15.0, -30.0, -50.0)), "cortical_bone", 0),  # breaks the symmetry
    ]
    V = [np.asarray(p[0][0], np.float64) for p in parts]
    F = [np.asarray(p[0][1], np.int64) for p in parts]
    return V, F, [p[1] for p in parts], [p[2] for p in parts]


def _norm(img):
    lo, hi = np.percentile(img, (0.5, 99.5))
    return np.clip((img - lo) / max(hi - lo, 1e-12), 0, 1)


def _plot(losses, n_iter, S):
    """Loss curve pane (S, S, 3) uint8: white polyline on dark grey, y from 0 to the max loss."""
    pane = np.full((S, S, 3), 30, np.uint8)
    pane[S - 6, 6:S - 6] = 90
    pane[6:S - 6, 6] = 90
    if len(losses) >= 1:
        y = np.asarray(losses, float)
        ymax = max(y.max(), 1e-6)
        xs = 6 + (S - 13) * np.arange(len(y)) / max(n_iter - 1, 1)
        ys = (S - 7) - (S - 14) * y / ymax
        for i in range(max(len(y) - 1, 1)):
            j = min(i + 1, len(y) - 1)
            t = np.linspace(0, 1, 64)
            cx = np.rint(xs[i] + t * (xs[j] - xs[i])).astype(int)
            cy = np.rint(ys[i] + t * (ys[j] - ys[i])).astype(int)
            for d in (0, 1):
                pane[np.clip(cy + d, 0, S - 1), np.clip(cx, 0, S - 1)] = (255, 220, 80)
    return pane


def composite(target, current, losses, n_iter, zoom):
    """(S, 4S, 3) uint8: target | current | overlay | loss curve (S = zoom * image size)."""
    t, c = _norm(target), _norm(current)

    def up(a):
        return np.kron(a, np.ones((zoom, zoom) + (1,) * (a.ndim - 2))) if a.ndim == 3 else np.kron(a, np.ones((zoom, zoom)))

    grey = lambda a: np.repeat(up(a)[..., None], 3, axis=2)  # noqa: E731
    over = np.stack([t, c, t], axis=-1)
    panes = [grey(t), grey(c), up(over)]
    S = panes[0].shape[0]
    img = np.concatenate([(np.rint(p * 255)).astype(np.uint8) for p in panes] + [_plot(losses, n_iter, S)], axis=1)
    return img


class LiveWindow:
    """A GGUI window (or a hidden one) that shows a composite image and a text panel."""

    def __init__(self, shape, show, title="taichi_xray fit_live"):
        import taichi as ti

        from taichi_xray.viewer import _make_window

        H, W = shape
        self.ti = ti
        self.window = _make_window(title, (W, H), show)
        self.canvas = self.window.get_canvas()
        self.field = ti.Vector.field(3, ti.u8, shape=(W, H))
        self.show = show

    def draw(self, rgb, lines):
        from taichi_xray.viewer import _to_field_layout

        self.field.from_numpy(_to_field_layout(rgb))
        self.canvas.set_image(self.field)
        if self.show:
            g = self.window.get_gui()
            with g.sub_window("fit", 0.76, 0.0, 0.24, 0.35) as s:
                for ln in lines:
                    s.text(ln)
            self.window.show()
        else:
            from taichi_xray.viewer import _from_window_buffer

            return _from_window_buffer(self.window.get_image_buffer_as_numpy())

    @property
    def running(self):
        return self.window.running


def run(argv=None) -> dict:
    p = argparse.ArgumentParser(description="live rigid 2D/3D registration (NGC loss)")
    p.add_argument("--iters", type=int, default=80)
    p.add_argument("--size", type=int, default=96, help="detector pixels per side")
    p.add_argument("--zoom", type=int, default=3, help="screen pixels per detector pixel")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", default=None)
    p.add_argument("--lr", type=float, default=0.6, help="Adam step (deg and mm)")
    p.add_argument("--offscreen", metavar="OUT", help="hidden window; write fit_NNNN.png into OUT (must exist)")
    p.add_argument("--every", type=int, default=5, help="off-screen: write every N-th iteration")
    p.add_argument("--no-window", action="store_true", help="text only")
    p.add_argument("--torch", action="store_true", help="gradients through the torch bridge instead of ti.ad.Tape")
    a = p.parse_args(argv)
    if a.iters < 1 or a.size < 8 or a.zoom < 1 or a.every < 1:
        p.error("need --iters >= 1, --size >= 8, --zoom >= 1, --every >= 1")
    if a.offscreen and not Path(a.offscreen).is_dir():
        p.error(f"--offscreen folder {a.offscreen} does not exist")
    runtime.init(a.arch) if a.arch else runtime.ensure_init()
    dev = runtime.torch_device()
    V, F, mats, parents = phantom()
    centre = torch.as_tensor(np.concatenate(V).mean(0), device=dev)
    cam = Camera.c_arm(sid=700.0, sdd=1100.0, width=a.size, height=a.size, pixel_spacing=440.0 / a.size,
                       lao=20.0, cran=5.0)
    spec = Spectrum.monochromatic(60.0)
    rng = np.random.default_rng(a.seed)
    true_p = np.concatenate([rng.uniform(-6, 6, 3), rng.uniform(-12, 12, 3)])  # deg, mm
    if a.torch:
        ren = XRayRenderer(F, cam, materials=mats, parents=parents, spectrum=spec)
        V0 = [torch.as_tensor(v, dtype=torch.float64, device=dev) for v in V]

        def render(rot_deg, t_mm):
            r = torch.deg2rad(rot_deg)
            return ren([rigid_transform(v, r, t_mm, centre) for v in V0])[0]

        with torch.no_grad():
            target = render(torch.as_tensor(true_p[:3], device=dev), torch.as_tensor(true_p[3:], device=dev))
        xt = torch.zeros(6, dtype=torch.float64, device=dev, requires_grad=True)
        opt = torch.optim.Adam([xt], lr=a.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.iters, eta_min=a.lr * 0.05)

        def step(it):
            opt.zero_grad()
            cur = render(xt[:3], xt[3:])
            loss = ngc_loss(cur, target)
            loss.backward()
            opt.step()
            sched.step()
            return float(loss.detach()), cur.detach().cpu().numpy(), xt.detach().cpu().numpy()
    else:
        from taichi_xray.fit.taichi_fit import Adam, TaichiPoseLoss
        from taichi_xray.mesh import Mesh
        from taichi_xray.pipeline import Pipeline

        pipe = Pipeline([Mesh(v, f) for v, f in zip(V, F)], cam, materials=mats, parents=parents, spectrum=spec)
        c_np = centre.cpu().numpy()
        posed = [rigid_transform(torch.as_tensor(v), torch.deg2rad(torch.as_tensor(true_p[:3])),
                                 torch.as_tensor(true_p[3:]), torch.as_tensor(c_np)).numpy() for v in V]
        target = pipe.render(posed).cpu()[0]
        loss_fn = TaichiPoseLoss(pipe, target.numpy(), centre=c_np)
        opt = Adam(np.zeros(6), lr=a.lr)
        lr0 = a.lr

        def step(it):
            opt.lr = lr0 * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * it / a.iters)))  # cosine, as in --torch
            p_before = opt.x.copy()
            loss, g = loss_fn(p_before)
            opt.step(g)
            return loss, loss_fn.image()[0], opt.x.copy()

    win, note = None, ""
    if not a.no_window:
        from taichi_xray.viewer import VulkanUnavailable

        try:
            win = LiveWindow((a.size * a.zoom, 4 * a.size * a.zoom), show=not a.offscreen)
        except (VulkanUnavailable, RuntimeError) as exc:
            note = str(exc).split(" (")[0]
            print(f"fit_live: no window ({note}); continuing with text output", file=sys.stderr)
    tnp = target.detach().cpu().numpy()
    losses, log, written = [], [], []
    t_start = time.perf_counter()
    for it in range(a.iters):
        loss, cur, x = step(it)
        losses.append(loss)
        err_r = float(np.linalg.norm(x[:3] - true_p[:3]))
        err_t = float(np.linalg.norm(x[3:] - true_p[3:]))
        log.append({"iter": it, "loss": losses[-1], "rot_err_deg": err_r, "trans_err_mm": err_t})
        lines = [f"iter {it + 1}/{a.iters} ({'torch' if a.torch else 'ti.ad.Tape'})", f"NGC loss {losses[-1]:.4f}",
                 f"rotation error {err_r:.2f} deg", f"translation error {err_t:.2f} mm"]
        if win is not None:
            if not win.running:
                break
            rgb = win.draw(composite(tnp, cur, losses, a.iters, a.zoom), lines)
            if a.offscreen and (it % a.every == 0 or it == a.iters - 1):
                from taichi_xray.viewer import _save_rgb, unique_stem

                path = _save_rgb(str(unique_stem(a.offscreen, "fit", (".png",), digits=4)) + ".png", rgb)
                written.append(str(path))
        if it % 10 == 0 or it == a.iters - 1:
            print("fit_live: " + ", ".join(lines), file=sys.stderr)
    res = {"true_rot_deg": true_p[:3].tolist(), "true_t_mm": true_p[3:].tolist(), "rot_deg": x[:3].tolist(),
           "t_mm": x[3:].tolist(), "log": log, "frames": written, "seconds": time.perf_counter() - t_start,
           "gradients": "torch" if a.torch else "taichi"}
    if a.offscreen:
        (Path(str(unique_stem(a.offscreen, "fit_log", (".json",))) + ".json")).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    out = run()
    last = out["log"][-1]
    print(f"final: loss {last['loss']:.4f}, rotation error {last['rot_err_deg']:.2f} deg, "
          f"translation error {last['trans_err_mm']:.2f} mm ({out['seconds']:.1f} s)")
