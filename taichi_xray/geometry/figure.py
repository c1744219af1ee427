"""A geometry figure: see at a glance whether a camera convention is right.

:func:`geometry_figure` draws, with matplotlib (Agg, no pyplot state):

* a 3-D panel in the world frame (LPS mm): every view's source, detector
  rectangle, beam frustum and central ray; the scene's meshes as vertex clouds
  (subsampled, one colour per object); the patient axes (L, P, S arrows); and,
  when a target image is given for a view, that image textured onto its
  detector rectangle (pixel (r, c) at the detector point of its ray);
* one 2-D panel per view: the target image (if any) with the meshes projected
  by the view's :class:`~taichi_xray.camera.Camera` on top (vertices and
  silhouette edges, i.e. edges between a front- and a back-facing triangle, in
  the object's colour).

If the overlay does not sit on the image, or the image on the detector is
mirrored with respect to the projected meshes, a convention is wrong.
Everything plotted is returned (:class:`GeometryFigure`) so that it can be
checked numerically.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..camera import Camera

__all__ = ["geometry_figure", "GeometryFigure", "ViewData", "silhouette_edges"]


@dataclass
class ViewData:
    """What was drawn for one view (world coordinates LPS mm, pixel coordinates (u, v))."""

    camera: Camera
    source: np.ndarray  # (3,)
    detector_depth: float  # mm along the principal axis
    detector_corners: np.ndarray  # (4, 3): pixel corners (-0.5, -0.5), (W-0.5, -0.5), (W-0.5, H-0.5), (-0.5, H-0.5)
    central_ray: np.ndarray  # (2, 3): source -> detector point of the image centre
    target: np.ndarray | None  # (H, W) or None
    texture: tuple | None = None  # (grid (h+1, w+1, 3) world, uv (h+1, w+1, 2)) of the textured target
    points2d: dict = field(default_factory=dict)  # name -> (N, 2) projected vertices drawn
    points3d: dict = field(default_factory=dict)  # name -> (N, 3) the same vertices, world
    silhouettes: dict = field(default_factory=dict)  # name -> (K, 2, 2) silhouette edge segments, pixels
    axes: object = None  # the 2-D matplotlib Axes


@dataclass
class GeometryFigure:
    """Result of :func:`geometry_figure`: the matplotlib ``figure``, the 3-D ``axes3d``, one
    :class:`ViewData` per view, the patient-axes origin and length, and the written ``path``."""

    figure: object
    axes3d: object
    views: list
    names: list
    axes_origin: np.ndarray
    axes_length: float
    path: Path | None = None


def _objects(scene):
    """[(name, vertices (N, 3), faces (M, 3))] from a Scene, a Mesh, a sequence or a dict of meshes."""
    if hasattr(scene, "objects"):
        items = [(o.name, o.mesh) for o in scene.objects]
    elif hasattr(scene, "vertices") and hasattr(scene, "faces"):
        items = [(getattr(scene, "name", None) or "mesh", scene)]
    elif isinstance(scene, dict):
        items = list(scene.items())
    else:
        try:
            seq = list(scene)
        except TypeError:
            raise TypeError("scene must be a taichi_xray Scene, a Mesh, a sequence of meshes or a dict "
                            f"name -> Mesh, got {type(scene).__name__}") from None
        items = []
        for i, it in enumerate(seq):
            if isinstance(it, tuple) and len(it) == 2:
                items.append(it)
            else:
                items.append((getattr(it, "name", None) or f"mesh {i}", it))
    out = []
    for name, m in items:
        if not (hasattr(m, "vertices") and hasattr(m, "faces")):
            raise TypeError(f"object {name!r} is not a mesh (needs .vertices and .faces)")
        out.append((str(name), np.asarray(m.vertices, dtype=np.float64), np.asarray(m.faces, dtype=np.int64)))
    if not out:
        raise ValueError("the scene has no meshes to draw")
    return out


def _load_image(t, label: str) -> np.ndarray:
    if isinstance(t, (str, os.PathLike)):
        p = Path(t)
        if not p.is_file():
            raise FileNotFoundError(f"{label}: image file not found: {p}")
        ext = p.suffix.lower()
        if ext == ".npy":
            a = np.load(p)
        elif ext in (".tif", ".tiff"):
            import tifffile

            a = tifffile.imread(p)
        elif ext == ".png":
            from ..imageio import read_png

            a = read_png(p)
        else:
            raise ValueError(f"{label}: unsupported image file {p.name!r} (use .png, .npy, .tif)")
    else:
        a = t.detach().cpu().numpy() if hasattr(t, "detach") else t
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{label}: image must be 2-D (H, W), got shape {a.shape}")
    if not np.isfinite(a).any():
        raise ValueError(f"{label}: image has no finite pixel")
    return a


def _views(scene, targets, cameras):
    targets = list(targets) if targets is not None else []
    pairs = [isinstance(t, tuple) and len(t) == 2 and isinstance(t[1], Camera) for t in targets]
    if any(pairs):
        if not all(pairs):
            raise ValueError("targets must be all images or all (image, Camera) pairs")
        if cameras is not None:
            raise ValueError("give the cameras either in the (image, Camera) pairs or in cameras=, not both")
        cameras = [t[1] for t in targets]
        images = [t[0] for t in targets]
    else:
        images = targets
        if cameras is None:
            cam = getattr(scene, "camera", None)
            if not isinstance(cam, Camera):
                raise ValueError("no camera: pass cameras=[...] or (image, Camera) targets when the scene has none")
            cameras = [cam] * max(1, len(images))
        else:
            cameras = [cameras] if isinstance(cameras, Camera) else list(cameras)
            if images and len(images) != len(cameras):
                raise ValueError(f"{len(images)} targets for {len(cameras)} cameras: give one target per camera")
    for i, c in enumerate(cameras):
        if not isinstance(c, Camera):
            raise TypeError(f"camera {i} is not a taichi_xray Camera ({type(c).__name__})")
    out = []
    for i, cam in enumerate(cameras):
        img = None
        if images:
            img = _load_image(images[i], f"target {i}")
            if img.shape != (cam.height, cam.width):
                raise ValueError(f"target {i}: image shape {img.shape} does not match camera {i}'s detector "
                                 f"(height, width) = ({cam.height}, {cam.width})")
        out.append((cam, img))
    return out


def silhouette_edges(uv: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Silhouette (contour) edges of a projected triangle mesh: edges whose two faces have opposite
    orientation in the image, plus boundary edges. uv (N, 2) pixels, faces (M, 3) -> (K, 2) vertex
    index pairs."""
    a, b, c = uv[faces[:, 0]], uv[faces[:, 1]], uv[faces[:, 2]]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    fidx = np.tile(np.arange(len(faces)), 3)
    key = np.sort(e, axis=1)
    uniq, inv, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    inv = inv.ravel()
    s = np.sign(area)[fidx]
    pos = np.bincount(inv, weights=(s > 0), minlength=len(uniq))
    neg = np.bincount(inv, weights=(s < 0), minlength=len(uniq))
    keep = (counts == 1) | ((pos > 0) & (neg > 0))
    return uniq[keep]


def _detector_depth(cam: Camera, pts: np.ndarray) -> float:
    if cam.detector_distance is not None:
        return float(cam.detector_distance)
    w = pts @ cam.P[2, :3] + cam.P[2, 3]
    w = w[w > 0]
    return float(1.25 * w.max()) if w.size else 1000.0


def _on_detector(cam: Camera, depth: float, u, v) -> np.ndarray:
    """World points (..., 3) of pixel coordinates (u, v) on the plane at ``depth`` mm."""
    pix = np.stack([np.asarray(u, float), np.asarray(v, float), np.ones(np.shape(u))], -1)
    return cam.source + depth * (pix @ cam.M_inv.T)


def _subsample(n: int, k: int) -> np.ndarray:
    return np.arange(n) if n <= k else np.linspace(0, n - 1, k).round().astype(np.int64)


def geometry_figure(scene, targets=(), out=None, cameras=None, *, overwrite: bool = False,
                    max_points: int = 1500, texture_size: int = 96, axes_length: float | None = None,
                    title: str | None = None, dpi: int = 110, cmap: str = "gray") -> GeometryFigure:
    """Draw the X-ray geometry of a scene (3-D view + one 2-D overlay per view).

    Parameters
    ----------
    scene : :class:`taichi_xray.scene.Scene` (its ``objects[i].mesh`` and ``camera``), a Mesh,
        a sequence of meshes / (name, Mesh) pairs, or a dict name -> Mesh.
    targets : images for the views: 2-D arrays (H, W) or files (.png, .npy, .tif), one per
        camera, or (image, Camera) pairs (then ``cameras`` must be None).
    out : PNG path to write, or None (then only the figure is returned).
    cameras : Camera or sequence of Cameras (the views); default ``scene.camera``.
    overwrite : replace an existing ``out`` (otherwise FileExistsError).
    max_points : vertices drawn per object (evenly subsampled).
    texture_size : longest side (pixels) of a target image textured onto its detector in 3-D.
    axes_length : length (mm) of the L/P/S arrows (drawn in the plot's corner nearest to the
        viewer); default 15 % of the plotted extent.

    Returns
    -------
    :class:`GeometryFigure` with the data that was plotted.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    objs = _objects(scene)
    views = _views(scene, targets, cameras)
    if out is not None:
        out = Path(out)
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
        if not out.parent.exists():
            raise FileNotFoundError(f"directory {out.parent} does not exist")
    if int(max_points) < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    palette = colormaps["tab10" if len(objs) <= 10 else "tab20"]
    colours = [palette(i % palette.N) for i in range(len(objs))]

    allv = np.concatenate([v for _, v, _ in objs])
    # look from the sources' side: the mean beam direction reversed, turned 35 deg about z
    d = np.mean([c.view_direction for c, _ in views], axis=0)
    azim = float(np.degrees(np.arctan2(-d[1], -d[0]))) + 35.0 if np.hypot(d[0], d[1]) > 1e-6 else -60.0
    elev = 20.0
    eye = np.array([np.cos(np.radians(elev)) * np.cos(np.radians(azim)),
                    np.cos(np.radians(elev)) * np.sin(np.radians(azim)), np.sin(np.radians(elev))])
    # detector placement of every view, then one cube holding meshes, sources and detectors
    geo = []
    for cam, _ in views:
        depth = _detector_depth(cam, allv)
        W, H = cam.width, cam.height
        corners = _on_detector(cam, depth, [-0.5, W - 0.5, W - 0.5, -0.5], [-0.5, -0.5, H - 0.5, H - 0.5])
        geo.append((depth, corners, _on_detector(cam, depth, (W - 1) / 2.0, (H - 1) / 2.0)))
    pts = np.concatenate([allv] + [np.vstack([c.source[None], g[1]]) for (c, _), g in zip(views, geo)])
    cube_c = 0.5 * (pts.min(0) + pts.max(0))
    cube_r = 0.5 * float(np.max(pts.max(0) - pts.min(0))) or 1.0
    L = float(axes_length) if axes_length is not None else 0.3 * cube_r
    # the L/P/S triad ends at the cube's corner nearest to the viewer, clear of the scene
    origin = np.where(eye > 0, cube_c + cube_r - L, cube_c - cube_r + 0.05 * cube_r)

    n = len(views)
    fig = Figure(figsize=(6.0 + 4.6 * n, 5.6), dpi=dpi)
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(1, n + 1, width_ratios=[1.35] + [1.0] * n)
    ax3 = fig.add_subplot(gs[0, 0], projection="3d")
    ax3.set_title("world (LPS mm): L = patient's left, P = posterior, S = superior" if title is None else title,
                  fontsize=9)

    # meshes as vertex clouds
    sub = {name: _subsample(len(V), int(max_points)) for name, V, _ in objs}
    for (name, V, _), col in zip(objs, colours):
        P = V[sub[name]]
        ax3.scatter(P[:, 0], P[:, 1], P[:, 2], s=1.5, color=col, alpha=0.6, depthshade=False, label=name)
    # patient axes
    for vec, lab, col in (((1, 0, 0), "L", "tab:red"), ((0, 1, 0), "P", "tab:green"), ((0, 0, 1), "S", "tab:blue")):
        arrow = np.asarray(vec, float) * L
        ax3.quiver(*origin, *arrow, color=col, linewidth=2.0, arrow_length_ratio=0.15)
        ax3.text(*(origin + 1.12 * arrow), lab, color=col, fontsize=11, fontweight="bold")

    view_data = []
    for i, ((cam, img), (depth, corners, centre)) in enumerate(zip(views, geo)):
        W, H = cam.width, cam.height
        src = cam.source
        vd = ViewData(camera=cam, source=src, detector_depth=depth, detector_corners=corners,
                      central_ray=np.stack([src, centre]), target=img)
        tag = f"view {i}" if n > 1 else "view"
        ax3.scatter(*src, color="k", marker="*", s=80)
        ax3.text(*src, f" source{'' if n == 1 else ' ' + str(i)}", fontsize=8)
        ring = np.vstack([corners, corners[:1]])
        ax3.plot(ring[:, 0], ring[:, 1], ring[:, 2], color="k", lw=1.2)
        ax3.text(*corners[0], " (row 0, col 0)", fontsize=7)
        for c in corners:
            ax3.plot(*np.stack([src, c]).T, color="0.45", lw=0.6, ls="--")
        ax3.plot(*vd.central_ray.T, color="tab:orange", lw=1.2)
        if img is not None:
            step = max(1, int(np.ceil(max(H, W) / max(1, int(texture_size)))))
            small = img[::step, ::step]
            h, w = small.shape
            uu = np.minimum(np.arange(w + 1) * step, W) - 0.5
            vv = np.minimum(np.arange(h + 1) * step, H) - 0.5
            UU, VV = np.meshgrid(uu, vv)
            Xs = _on_detector(cam, depth, UU, VV)
            vd.texture = (Xs, np.stack([UU, VV], -1))
            finite = small[np.isfinite(small)]
            lo_i, hi_i = np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0)
            norm = np.clip((small - lo_i) / max(hi_i - lo_i, 1e-12), 0, 1)
            fc = np.zeros((h + 1, w + 1, 4))
            fc[:h, :w] = colormaps[cmap](np.nan_to_num(norm))
            fc[..., 3] = np.where(fc[..., 3] > 0, 0.7, 0.0)
            ax3.plot_surface(Xs[..., 0], Xs[..., 1], Xs[..., 2], facecolors=fc, rstride=1, cstride=1,
                             shade=False, linewidth=0, antialiased=False)

        # 2-D panel
        ax = fig.add_subplot(gs[0, i + 1])
        vd.axes = ax
        if img is not None:
            finite = img[np.isfinite(img)]
            lo_i, hi_i = np.percentile(finite, [0.5, 99.5])
            ax.imshow(img, cmap=cmap, vmin=lo_i, vmax=hi_i, extent=(-0.5, W - 0.5, H - 0.5, -0.5),
                      interpolation="nearest")
        for (name, V, F), col in zip(objs, colours):
            uv, w = cam.project(V)
            front = w > 0
            idx = sub[name][front[sub[name]]]
            vd.points3d[name] = V[idx]
            vd.points2d[name] = uv[idx]
            ax.scatter(uv[idx, 0], uv[idx, 1], s=0.8, color=col, alpha=0.7, linewidths=0)
            fok = front[F].all(axis=1)
            e = silhouette_edges(uv, F[fok]) if fok.any() else np.zeros((0, 2), np.int64)
            seg = uv[e] if len(e) else np.zeros((0, 2, 2))
            vd.silhouettes[name] = seg
            ax.add_collection(LineCollection(seg, colors=[col], linewidths=0.8))
        ax.set_xlim(-0.5, W - 0.5)
        ax.set_ylim(H - 0.5, -0.5)  # rows go down, as in the image array
        ax.set_aspect("equal")
        ax.set_xlabel("column u (px)")
        ax.set_ylabel("row v (px)")
        ax.set_title(f"{tag}: {'target + ' if img is not None else ''}projected meshes"
                     f"{' (mirrored camera)' if cam.mirrored else ''}", fontsize=9)
        view_data.append(vd)

    c, r = cube_c, cube_r
    ax3.set_xlim(c[0] - r, c[0] + r)
    ax3.set_ylim(c[1] - r, c[1] + r)
    ax3.set_zlim(c[2] - r, c[2] + r)
    ax3.set_box_aspect((1, 1, 1))
    ax3.view_init(elev=elev, azim=azim)
    ax3.set_xlabel("x (L+) mm", fontsize=8)
    ax3.set_ylabel("y (P+) mm", fontsize=8)
    ax3.set_zlabel("z (S+) mm", fontsize=8)
    ax3.tick_params(labelsize=7)
    if len(objs) > 1:
        ax3.legend(loc="upper left", fontsize=6, markerscale=5, ncol=1 + len(objs) // 12, frameon=False)
    fig.tight_layout()
    result = GeometryFigure(figure=fig, axes3d=ax3, views=view_data, names=[o[0] for o in objs],
                            axes_origin=origin, axes_length=L)
    if out is not None:
        fig.savefig(out, dpi=dpi)
        result.path = out
    return result
