"""DeepFluoro (Grupp et al., IPCAI 2020, ``ipcai_2020_full_res_data.h5``) <-> :class:`~taichi_xray.camera.Camera`.

Layout and conventions are taken from the dataset authors' own description and
example code, rg2/DeepFluoroLabeling-IPCAI2020 (``hdf5_layouts/Readme.md``,
``examples_dataset/full_res_3d_viz.py``, ``make_full_res_overlays.py``), and
checked against DiffPose's loader (eigenvivek/DiffPose ``diffpose/deepfluoro.py``)
and xreg's (rg2/xreg ``apps/hip_surgery/sample_single_view_regi_2d_3d``)::

    proj-params/intrinsic          (3, 3) camera projective frame -> pixels (column, row)
    proj-params/extrinsic          (4, 4) world -> camera projective frame
    proj-params/num-cols, num-rows, pixel-col-spacing, pixel-row-spacing (mm/px)
    <specimen>/vol/{pixels, origin, spacing, dir-mat}   ITK image: pixels row-major (Z, Y, X),
                                                       origin = LPS mm of index 0, dir-mat = I
    <specimen>/vol-landmarks/<name>                    (3,) LPS mm
    <specimen>/projections/<NNN>/image/pixels          (rows, cols)
    <specimen>/projections/<NNN>/gt-landmarks/<name>   (2,) (column, row) pixels
    <specimen>/projections/<NNN>/gt-poses/cam-to-pelvis-vol  (4, 4) camera world -> pelvis volume
    <specimen>/projections/<NNN>/rot-180-for-up        0/1: rotate the image by 180 deg for "head up"

* The pelvis-volume frame is the CT's LPS physical frame (the frame of
  ``vol-landmarks``), i.e. taichi_xray's world: ``full_res_3d_viz.py`` maps
  landmarks to the camera with ``extrinsic @ inv(cam-to-pelvis-vol)``.
* The camera projective frame has its origin at the source, x along increasing
  columns, y along increasing rows and **z toward the source**; the stored
  intrinsic has negative focal lengths (about -5257.73 px at 0.194 mm, i.e.
  1020 mm). Points in front have z < 0, so taichi_xray's ``P`` is
  ``-intrinsic @ (extrinsic @ inv(cam-to-pelvis-vol))[:3]``. That frame is the
  mirror image of OpenCV's (z flipped, x and y kept), so a DeepFluoro camera is
  **mirrored** (``Camera.mirrored``): the images are the view from behind the detector.
* Pixel (row r, column c) is centred at (c, r) (ITK index convention), as in
  taichi_xray; a 180 deg rotation maps (u, v) to (W - 1 - u, H - 1 - v)
  (``make_full_res_overlays.py``).
* xreg's reader subtracts 0.5 mm from ``cam-to-pelvis-vol``'s translation ("an
  inconsistency with linear interpolation texture indexing") before its own DRR
  ray casting; ``xreg_texture_correction=True`` does the same. The authors'
  landmark example does not, and neither do we by default.
"""
from __future__ import annotations

import os

import numpy as np

from ..camera import Camera
from .frames import _array, as_transform, rigid, rotate_180

__all__ = [
    "DEEPFLUORO_SPECIMENS",
    "camera_from_deepfluoro",
    "deepfluoro_from_camera",
    "deepfluoro_volume",
    "deepfluoro_landmarks",
]

#: Specimen groups in DiffPose's numbering (``DeepFluoroDataset(id_number)``, 1-based).
DEEPFLUORO_SPECIMENS = ("17-1882", "18-1109", "18-0725", "18-2799", "18-2800", "17-1905")


class _Open:
    """Context manager: an h5py file opened from a path, or the group/mapping itself."""

    def __init__(self, source):
        self.source, self.file = source, None

    def __enter__(self):
        if isinstance(self.source, (str, os.PathLike)):
            path = os.fspath(self.source)
            if not os.path.exists(path):
                raise FileNotFoundError(f"DeepFluoro file not found: {path}")
            import h5py

            self.file = h5py.File(path, "r")
            return self.file
        if not hasattr(self.source, "__getitem__"):
            raise TypeError("source must be a path, an h5py File/Group or a nested mapping, got "
                            f"{type(self.source).__name__}")
        return self.source

    def __exit__(self, *exc):
        if self.file is not None:
            self.file.close()


def _get(node, path: str):
    """``node[path]`` for h5py groups ("a/b" paths) and nested mappings."""
    try:
        return node[path]
    except (KeyError, TypeError, ValueError):
        pass
    cur = node
    for part in path.split("/"):
        try:
            cur = cur[part]
        except (KeyError, TypeError, ValueError, IndexError):
            raise KeyError(f"DeepFluoro layout: '{path}' not found (no '{part}')") from None
    return cur


def _value(x) -> np.ndarray:
    try:
        return np.asarray(x[()])
    except (TypeError, IndexError, KeyError, ValueError):
        return np.asarray(x)


def _specimen_name(root, specimen) -> str:
    if specimen is None:
        names = [k for k in root.keys() if k != "proj-params"]
        if len(names) != 1:
            raise ValueError(f"several specimens in the file, pass specimen=...: {sorted(names)}")
        return names[0]
    if isinstance(specimen, (int, np.integer)) and not isinstance(specimen, bool):
        if not 1 <= specimen <= len(DEEPFLUORO_SPECIMENS):
            raise ValueError(f"specimen number must be 1..6 (DiffPose numbering), got {specimen}")
        return DEEPFLUORO_SPECIMENS[specimen - 1]
    return str(specimen)


def _projection_name(index) -> str:
    if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
        if index < 0:
            raise ValueError(f"projection_index must be >= 0, got {index}")
        return f"{int(index):03d}"
    return str(index)


def _proj_params(root) -> dict:
    g = _get(root, "proj-params")
    K = _array("proj-params/intrinsic", _value(_get(g, "intrinsic")), (3, 3))
    if not np.allclose(K[2], [0.0, 0.0, 1.0]):
        raise ValueError(f"proj-params/intrinsic's last row must be [0, 0, 1], got {K[2].tolist()}")
    E = as_transform("proj-params/extrinsic", _value(_get(g, "extrinsic")))
    out = dict(intrinsic=K, extrinsic=E)
    for key in ("num-cols", "num-rows", "pixel-col-spacing", "pixel-row-spacing"):
        out[key] = float(_value(_get(g, key)).ravel()[0])
    return out


def camera_from_deepfluoro(source, projection_index, specimen=None, *, rotate_for_up: bool = False,
                           xreg_texture_correction: bool = False) -> Camera:
    """Camera (LPS world = the CT's physical frame) of one DeepFluoro projection.

    source : path of ``ipcai_2020_full_res_data.h5``, an open ``h5py.File`` or a nested mapping
        with the same layout (``{"proj-params": {...}, "17-1882": {"projections": {...}}}``).
    projection_index : int (formatted "%03d") or the projection group's name.
    specimen : group name ("17-1882"), DiffPose's number 1..6, or None when the file holds one.
    rotate_for_up : describe the image rotated by 180 deg when its ``rot-180-for-up`` flag is
        set (the orientation DiffPose and the authors' overlays show); default: the stored pixels.
    xreg_texture_correction : apply xreg's -0.5 mm shift of the pose (see the module notes).
    """
    with _Open(source) as root:
        pp = _proj_params(root)
        proj = _get(_get(_get(root, _specimen_name(root, specimen)), "projections"), _projection_name(projection_index))
        T = as_transform("gt-poses/cam-to-pelvis-vol", _value(_get(proj, "gt-poses/cam-to-pelvis-vol")))
        try:
            rot_flag = bool(_value(_get(proj, "rot-180-for-up")).ravel()[0])
        except KeyError:
            rot_flag = False
    if xreg_texture_correction:
        T = rigid(np.eye(3), (-0.5, -0.5, -0.5)) @ T
    K, E = pp["intrinsic"], pp["extrinsic"]
    P = -(K @ (E @ np.linalg.inv(T))[:3])  # the projective frame's z points toward the source
    fx, fy = abs(K[0, 0]), abs(K[1, 1])
    focal_mm = 0.5 * (fx * pp["pixel-col-spacing"] + fy * pp["pixel-row-spacing"])
    W, H = int(round(pp["num-cols"])), int(round(pp["num-rows"]))
    cam = Camera.from_projection_matrix(P, W, H, pixel_spacing=2.0 * focal_mm / (fx + fy))
    return rotate_180(cam) if (rotate_for_up and rot_flag) else cam


def deepfluoro_from_camera(cam: Camera, extrinsic=None) -> dict:
    """The DeepFluoro fields (nested dict, the file's names) of a camera: ``proj-params`` (intrinsic
    with negative focal lengths, extrinsic, sizes, spacings) and ``cam-to-pelvis-vol`` (4, 4).

    extrinsic : the (4, 4) ``proj-params/extrinsic`` to express the pose against (default identity);
        the dataset shares one extrinsic between all projections.
    The camera must be mirrored, as DeepFluoro's projective frame is (see the module notes);
    for a non-mirrored camera pass ``flip_columns(cam)`` and the image ``img[:, ::-1]``.
    """
    if not isinstance(cam, Camera):
        raise TypeError(f"cam must be a taichi_xray Camera, got {type(cam).__name__}")
    if not cam.mirrored:
        raise ValueError("DeepFluoro's camera frame (x: columns, y: rows, z: toward the source) sees a "
                         "mirrored image; this camera is not mirrored. Convert flip_columns(cam) "
                         "(taichi_xray.geometry.frames) and store the image img[:, ::-1]")
    if cam.pixel_spacing is None:
        raise ValueError("DeepFluoro stores pixel spacings; the camera has no pixel_spacing")
    D = np.diag([1.0, 1.0, -1.0])
    K = -(cam.K @ D)  # = [[-fx, -s, cx], [0, -fy, cy], [0, 0, 1]]
    cam_proj_from_vol = rigid(D @ cam.R, D @ cam.t)
    E = np.eye(4) if extrinsic is None else as_transform("extrinsic", extrinsic)
    T = np.linalg.inv(cam_proj_from_vol) @ E
    T[3] = (0.0, 0.0, 0.0, 1.0)
    ps = float(cam.pixel_spacing)
    return {
        "proj-params": {"intrinsic": K, "extrinsic": E, "num-cols": cam.width, "num-rows": cam.height,
                        "pixel-col-spacing": ps, "pixel-row-spacing": ps},
        "gt-poses": {"cam-to-pelvis-vol": T},
        "rot-180-for-up": 0,
    }


def deepfluoro_volume(source, specimen=None) -> tuple[np.ndarray, np.ndarray]:
    """The CT of a specimen: ``hu`` (X, Y, Z) float32 and its voxel -> LPS mm ``affine`` (4, 4);
    ``taichi_xray.ct.projector.CTVolume(hu, affine, space="LPS")`` renders it."""
    with _Open(source) as root:
        vol = _get(_get(root, _specimen_name(root, specimen)), "vol")
        pix = _value(_get(vol, "pixels"))
        spacing = _array("vol/spacing", _value(_get(vol, "spacing")).ravel(), (3,))
        origin = _array("vol/origin", _value(_get(vol, "origin")).ravel(), (3,))
        try:
            direction = _array("vol/dir-mat", _value(_get(vol, "dir-mat")), (3, 3))
        except KeyError:
            direction = np.eye(3)
    if pix.ndim != 3:
        raise ValueError(f"vol/pixels must be 3-D (Z, Y, X), got shape {pix.shape}")
    A = np.eye(4)
    A[:3, :3] = direction * spacing[None, :]
    A[:3, 3] = origin
    return np.ascontiguousarray(np.transpose(pix, (2, 1, 0)), dtype=np.float32), A


def deepfluoro_landmarks(source, specimen=None, projection_index=None) -> dict:
    """Landmarks: ``{name: (3,) LPS mm}`` from ``vol-landmarks`` when ``projection_index`` is None,
    else ``{name: (2,) (u, v) pixels}`` from that projection's ``gt-landmarks`` (stored image)."""
    with _Open(source) as root:
        spec = _get(root, _specimen_name(root, specimen))
        if projection_index is None:
            g, n = _get(spec, "vol-landmarks"), 3
        else:
            g, n = _get(_get(_get(spec, "projections"), _projection_name(projection_index)), "gt-landmarks"), 2
        return {str(k): _array(f"landmark {k}", _value(g[k]).ravel(), (n,)) for k in g.keys()}
