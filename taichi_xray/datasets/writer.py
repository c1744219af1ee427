"""The on-disk format: HDF5 shards, per-shard done markers and a JSON manifest.

An output folder holds::

    manifest.json            dataset hash, taichi_xray version, seed, layout, shards, failures
    shard-000000.h5          samples [0, K)           (one HDF5 file per shard)
    shard-000000.done.json   written last: the shard's sample range, SHA-256 and failures
    shard-000001.h5          samples [K, 2K) ...

A shard is written to ``shard-NNNNNN.h5.partial``, flushed, renamed, and only then is its
``.done.json`` marker written; a shard counts as finished when its marker exists and the
SHA-256 of the ``.h5`` matches it, so an interrupted run leaves either finished shards or
``.partial`` files (redone). HDF5 objects are created without timestamps
(``track_times=False``) and the manifest holds no times or worker counts: the same command
gives the same bytes.

Datasets in a shard (K samples, images H x W, G mask groups, G' path-length groups,
L landmarks, Q parameters), each chunked one sample per chunk (random access):

===================== ================= =========================================================
name                  shape, dtype      content
===================== ================= =========================================================
index                 (K,) int64        global sample index
failed                (K,) uint8        1 = every attempt failed (see ``error``); slot kept
attempts              (K,) int16        draws used (1 = first draw)
error                 (K,) string       last error of a failed sample ("" otherwise)
scene                 (K,) int16        index into the manifest's ``scenes``
image                 (K, H, W) float32 the ``[output] kind`` image (NaN for failed samples)
image_u16             (K, H, W) uint16  windowed 16-bit copy; ``window`` (K, 2) float64 (lo, hi)
masks                 (K, G, H, W) u8   1 where the group's path length > 0
path_lengths          (K, G', H, W) f32 union path length of each group, mm
landmarks             (K, L, 2) float32 pixel (u, v); ``landmarks_depth`` (K, L) w in mm;
                                        ``landmarks_visible`` (K, L) uint8; ``landmarks_3d``
                                        (K, L, 3) world mm
P                     (K, 3, 4) float64 projection matrix (world mm -> pixels)
params                (K, Q) float64    sampled parameters, names in the ``names`` attribute
===================== ================= =========================================================
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Layout", "ShardWriter", "shard_name", "marker_path", "sha256_file", "read_marker", "shard_is_done",
           "write_marker", "write_json_atomic", "FORMAT", "FORMAT_VERSION", "MANIFEST"]

FORMAT = "taichi_xray.dataset"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def shard_name(k: int) -> str:
    return f"shard-{k:06d}.h5"


def marker_path(outdir: Path, k: int) -> Path:
    return Path(outdir) / f"shard-{k:06d}.done.json"


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json_atomic(path: Path, obj) -> None:
    """JSON (sorted keys, no times) to ``path`` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_marker(outdir: Path, k: int) -> dict | None:
    p = marker_path(outdir, k)
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def write_marker(outdir: Path, info: dict) -> None:
    write_json_atomic(marker_path(outdir, info["shard"]), info)


def shard_is_done(outdir: Path, k: int, start: int, stop: int) -> dict | None:
    """The marker of shard ``k`` if it is finished: marker present, same sample range, and the
    SHA-256 of the ``.h5`` file matches; else None (the shard is redone)."""
    m = read_marker(outdir, k)
    f = Path(outdir) / shard_name(k)
    if m is None or not f.is_file() or m.get("start") != start or m.get("stop") != stop:
        return None
    if sha256_file(f) != m.get("sha256"):
        return None
    return m


@dataclass
class Layout:
    """What every shard holds (the same for all shards of a run).

    width, height : image size (px); f32 / u16 : which images; masks, path_lengths,
    landmarks, params : names; compression : "gzip" | "lzf" | "none"; level : gzip level.
    """

    width: int
    height: int
    f32: bool
    u16: bool
    masks: list = field(default_factory=list)
    path_lengths: list = field(default_factory=list)
    landmarks: list = field(default_factory=list)
    params: list = field(default_factory=list)
    compression: str = "gzip"
    level: int = 4

    def to_json(self) -> dict:
        return {"width": self.width, "height": self.height, "float32": self.f32, "uint16": self.u16,
                "masks": list(self.masks), "path_lengths": list(self.path_lengths),
                "landmarks": list(self.landmarks), "params": list(self.params),
                "compression": self.compression, "compression_level": self.level}

    @classmethod
    def from_json(cls, d: dict) -> "Layout":
        return cls(d["width"], d["height"], d["float32"], d["uint16"], list(d["masks"]), list(d["path_lengths"]),
                   list(d["landmarks"]), list(d["params"]), d["compression"], d["compression_level"])


class ShardWriter:
    """Writes one shard of ``n`` samples to ``path`` (an HDF5 file; use a ``.partial`` name
    and rename it when :meth:`close` returns). ``attrs``: file attributes (JSON-able)."""

    def __init__(self, path, layout: Layout, n: int, attrs: dict):
        import h5py

        self.path = Path(path)
        self.layout = lay = layout
        self.n = int(n)
        H, W = lay.height, lay.width
        self.f = h5py.File(self.path, "w")
        comp = {}
        if lay.compression == "gzip":
            comp = dict(compression="gzip", compression_opts=lay.level, shuffle=True)
        elif lay.compression == "lzf":
            comp = dict(compression="lzf", shuffle=True)
        self._d = {}

        def ds(name, shape, dtype, compress=True, chunk_one=True, fill=None):
            chunks = (1,) + tuple(shape) if chunk_one and len(shape) else None
            kw = dict(comp) if compress else {}
            if fill is not None:
                kw["fillvalue"] = fill
            self._d[name] = self.f.create_dataset(name, shape=(self.n,) + tuple(shape), dtype=dtype,
                                                  chunks=chunks, track_times=False, **kw)
            return self._d[name]

        str_t = h5py.string_dtype("utf-8")
        ds("index", (), np.int64, compress=False)
        ds("failed", (), np.uint8, compress=False)
        ds("attempts", (), np.int16, compress=False)
        ds("error", (), str_t, compress=False)
        ds("scene", (), np.int16, compress=False)
        if lay.f32:
            ds("image", (H, W), np.float32)
        if lay.u16:
            ds("image_u16", (H, W), np.uint16)
            ds("window", (2,), np.float64, compress=False)
        if lay.masks:
            ds("masks", (len(lay.masks), H, W), np.uint8).attrs["names"] = json.dumps(lay.masks)
        if lay.path_lengths:
            ds("path_lengths", (len(lay.path_lengths), H, W), np.float32).attrs["names"] = json.dumps(
                lay.path_lengths)
        L = len(lay.landmarks)
        if L:
            ds("landmarks", (L, 2), np.float32, compress=False).attrs["names"] = json.dumps(lay.landmarks)
            ds("landmarks_depth", (L,), np.float32, compress=False)
            ds("landmarks_visible", (L,), np.uint8, compress=False)
            ds("landmarks_3d", (L, 3), np.float32, compress=False)
        ds("P", (3, 4), np.float64, compress=False)
        ds("params", (len(lay.params),), np.float64, compress=False).attrs["names"] = json.dumps(lay.params)
        for k, v in attrs.items():
            self.f.attrs[k] = json.dumps(v) if isinstance(v, (dict, list)) else v

    def write(self, k: int, r) -> None:
        """Sample ``r`` (a :class:`~taichi_xray.datasets.worker.SampleResult`) at local slot ``k``."""
        d, lay = self._d, self.layout
        d["index"][k] = r.index
        d["failed"][k] = int(r.failed)
        d["attempts"][k] = r.attempts
        d["error"][k] = r.error
        d["scene"][k] = r.scene
        if lay.f32:
            d["image"][k] = _np(r.image)
        if lay.u16:
            d["image_u16"][k] = _np(r.image_u16).astype(np.uint16)
            d["window"][k] = r.window
        if lay.masks:
            d["masks"][k] = _np(r.masks).astype(np.uint8)
        if lay.path_lengths:
            d["path_lengths"][k] = _np(r.path_lengths)
        if lay.landmarks:
            d["landmarks"][k] = r.landmarks
            d["landmarks_depth"][k] = r.landmarks_depth
            d["landmarks_visible"][k] = r.landmarks_visible.astype(np.uint8)
            d["landmarks_3d"][k] = r.landmarks_3d
        d["P"][k] = r.P
        d["params"][k] = r.params

    def close(self) -> None:
        self.f.flush()
        self.f.close()
        with open(self.path, "rb") as fh:
            os.fsync(fh.fileno())


def _np(t) -> np.ndarray:
    if hasattr(t, "detach"):
        return t.detach().cpu().numpy()
    return np.asarray(t)
