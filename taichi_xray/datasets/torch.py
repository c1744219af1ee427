"""PyTorch datasets: read a generated dataset back, or render the same samples on the fly.

* :class:`ShardedDataset` (map-style): random access to the samples of an output folder of
  ``taichi-xray generate`` (HDF5 shards + ``manifest.json``); CPU tensors.
* :class:`OnTheFlyDataset` (iterable): renders samples during training on the kernels'
  device (no disk), with the same sampling: sample ``i`` of ``OnTheFlyDataset(file, seed)``
  is sample ``i`` of ``generate(file, ..., seed=seed)``, bit for bit (deterministic
  pipelines). DataLoader workers split the indices (worker ``w`` of ``W`` takes
  ``start + w, start + w + W, ...``); use ``multiprocessing_context="spawn"`` when
  ``num_workers > 0`` (Taichi's runtime does not survive a fork).

A sample is a dict of tensors (present when the dataset writes them):

=================== ================= ===============================================
key                 shape, dtype      meaning
=================== ================= ===============================================
index               () int64          global sample index
failed              () bool           every draw failed (then images are NaN)
scene               () int64          index into the dataset's scenes
image               (H, W) float32    the ``[output] kind`` image
image_u16           (H, W) int32      16-bit copy (values 0..65535); ``window`` (2,) float64
masks               (G, H, W) bool    group masks (names: ``mask_names``)
path_lengths        (G', H, W) f32    group path lengths, mm (``path_length_names``)
landmarks           (L, 2) float32    pixel (u, v) (``landmark_names``)
landmarks_visible   (L,) bool         in front of the source and inside the detector
landmarks_depth     (L,) float32      w, mm; ``landmarks_3d`` (L, 3) world mm
P                   (3, 4) float64    projection matrix
params              (Q,) float64      sampled parameters (``param_names``)
=================== ================= ===============================================
"""
from __future__ import annotations

import bisect
import itertools
import json
import os
from pathlib import Path

import numpy as np
import torch

from .writer import FORMAT, MANIFEST, Layout

__all__ = ["ShardedDataset", "OnTheFlyDataset", "sample_dict", "worker_indices"]


class ShardedDataset(torch.utils.data.Dataset):
    """Map-style dataset over an output folder of ``taichi-xray generate``.

    root : the folder (with ``manifest.json``). skip_failed : leave failed samples out
    (``len`` counts the others; ``indices`` maps positions to global sample indices).
    fields : keys to read (default all; fewer keys read less). Shards are opened lazily,
    once per process, so the dataset works with DataLoader workers (fork or spawn).
    """

    def __init__(self, root, skip_failed: bool = True, fields=None):
        self.root = Path(root)
        mpath = self.root / MANIFEST
        if not mpath.is_file():
            raise FileNotFoundError(f"{mpath} not found: not an output folder of taichi-xray generate")
        self.manifest = m = json.loads(mpath.read_text())
        if m.get("format") != FORMAT:
            raise ValueError(f"{mpath}: not a taichi_xray dataset manifest (format {m.get('format')!r})")
        self.layout = Layout.from_json(m["layout"])
        self.shards = sorted(m["shards"], key=lambda s: s["start"])
        if not self.shards:
            raise ValueError(f"{mpath}: no finished shard (the run has not finished any)")
        self._starts = [s["start"] for s in self.shards]
        failed = {f["index"] for f in m.get("failed", [])}
        idx = [i for s in self.shards for i in range(s["start"], s["stop"]) if not (skip_failed and i in failed)]
        self.indices = np.asarray(idx, dtype=np.int64)
        self.complete = bool(m.get("complete"))
        self.fields = None if fields is None else set(fields)
        self._h5: dict = {}
        self._pid = None

    # names
    @property
    def param_names(self) -> list[str]:
        return list(self.layout.params)

    @property
    def mask_names(self) -> list[str]:
        return list(self.layout.masks)

    @property
    def path_length_names(self) -> list[str]:
        return list(self.layout.path_lengths)

    @property
    def landmark_names(self) -> list[str]:
        return list(self.layout.landmarks)

    def __len__(self) -> int:
        return len(self.indices)

    def _file(self, shard: dict):
        import h5py

        if self._pid != os.getpid():  # a new process (DataLoader worker): own handles
            self._h5, self._pid = {}, os.getpid()
        f = self._h5.get(shard["file"])
        if f is None:
            f = self._h5[shard["file"]] = h5py.File(self.root / shard["file"], "r")
        return f

    def sample(self, index: int) -> dict:
        """The sample with global index ``index`` (failed ones included)."""
        k = bisect.bisect_right(self._starts, int(index)) - 1
        if k < 0 or not (self.shards[k]["start"] <= index < self.shards[k]["stop"]):
            raise IndexError(f"sample {index} is not in a finished shard of {self.root}")
        sh = self.shards[k]
        f = self._file(sh)
        j = int(index) - sh["start"]
        want = self.fields
        out = {}

        def get(name):
            return (want is None or name in want) and name in f

        out["index"] = torch.tensor(int(f["index"][j]), dtype=torch.int64)
        out["failed"] = torch.tensor(bool(f["failed"][j]))
        out["scene"] = torch.tensor(int(f["scene"][j]), dtype=torch.int64)
        if get("error"):
            e = f["error"][j]
            out["error"] = e.decode() if isinstance(e, bytes) else str(e)
        if get("image"):
            out["image"] = torch.from_numpy(f["image"][j])
        if get("image_u16"):
            out["image_u16"] = torch.from_numpy(f["image_u16"][j].astype(np.int32))
            out["window"] = torch.from_numpy(f["window"][j])
        if get("masks"):
            out["masks"] = torch.from_numpy(f["masks"][j].astype(bool))
        if get("path_lengths"):
            out["path_lengths"] = torch.from_numpy(f["path_lengths"][j])
        if get("landmarks"):
            out["landmarks"] = torch.from_numpy(f["landmarks"][j])
            out["landmarks_visible"] = torch.from_numpy(f["landmarks_visible"][j].astype(bool))
            out["landmarks_depth"] = torch.from_numpy(f["landmarks_depth"][j])
            out["landmarks_3d"] = torch.from_numpy(f["landmarks_3d"][j])
        if get("P"):
            out["P"] = torch.from_numpy(f["P"][j])
        if get("params"):
            out["params"] = torch.from_numpy(f["params"][j])
        return out

    def __getitem__(self, i: int) -> dict:
        if isinstance(i, torch.Tensor):
            i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} samples")
        return self.sample(int(self.indices[i]))

    def close(self) -> None:
        for f in self._h5.values():
            f.close()
        self._h5 = {}

    def __getstate__(self):  # open HDF5 handles are not picklable
        d = dict(self.__dict__)
        d["_h5"], d["_pid"] = {}, None
        return d


def sample_dict(r, layout_names: dict | None = None) -> dict:
    """The dict of a :class:`~taichi_xray.datasets.worker.SampleResult` (tensors on the
    kernels' device; same keys and dtypes as :class:`ShardedDataset`)."""
    dev = r.image.device if r.image is not None else "cpu"

    def t(a, dtype=None):
        x = torch.as_tensor(np.array(a))  # a copy: some arrays are read-only
        return x.to(device=dev, dtype=dtype) if dtype is not None else x.to(dev)

    out = {"index": torch.tensor(r.index, dtype=torch.int64, device=dev),
           "failed": torch.tensor(bool(r.failed), device=dev),
           "scene": torch.tensor(r.scene, dtype=torch.int64, device=dev), "error": r.error}
    if r.image is not None:
        out["image"] = r.image
    if r.image_u16 is not None:
        out["image_u16"] = r.image_u16
        out["window"] = t(r.window, torch.float64)
    if r.masks is not None:
        out["masks"] = r.masks
    if r.path_lengths is not None:
        out["path_lengths"] = r.path_lengths
    if len(r.landmarks):
        out["landmarks"] = t(r.landmarks)
        out["landmarks_visible"] = t(r.landmarks_visible)
        out["landmarks_depth"] = t(r.landmarks_depth)
        out["landmarks_3d"] = t(r.landmarks_3d)
    out["P"] = t(r.P, torch.float64)
    out["params"] = t(r.params, torch.float64)
    return out


def worker_indices(start: int, stop: int | None, worker: int = 0, n_workers: int = 1):
    """Indices of ``range(start, stop)`` (``stop=None``: unbounded) taken by DataLoader worker
    ``worker`` of ``n_workers``: ``start + worker``, then every ``n_workers``-th."""
    if not 0 <= worker < n_workers:
        raise ValueError(f"worker must be in [0, {n_workers}), got {worker}")
    if stop is None:
        return itertools.count(start + worker, n_workers)
    return range(start + worker, stop, n_workers)


class OnTheFlyDataset(torch.utils.data.IterableDataset):
    """Samples of a dataset file rendered during iteration, on the kernels' device.

    dataset : the dataset TOML file. seed : as ``generate --seed``. start, stop : the sample
    indices (``stop=None``: an endless stream). include_failed : also yield samples whose
    every draw failed (marked ``failed``; by default they are skipped, indices unchanged).
    arch : Taichi backend ("cpu", "cuda", ... ; default: the running one / TAICHI_XRAY_ARCH).
    """

    def __init__(self, dataset, seed: int = 0, start: int = 0, stop: int | None = None,
                 include_failed: bool = False, arch: str | None = None):
        from .sampling import check_seed
        from .spec import load_dataset

        self.dataset = Path(dataset)
        self.seed = check_seed(seed)
        if start < 0 or (stop is not None and stop < start):
            raise ValueError(f"need 0 <= start <= stop, got start={start}, stop={stop}")
        self.start, self.stop = int(start), None if stop is None else int(stop)
        self.include_failed = bool(include_failed)
        self.arch = arch
        self.spec = load_dataset(self.dataset)  # validates now, in the main process
        self._renderer = None
        self._pid = None

    def __len__(self) -> int:
        if self.stop is None:
            raise TypeError("an endless OnTheFlyDataset (stop=None) has no length")
        return self.stop - self.start

    def renderer(self):
        if self._renderer is None:
            from ..render import use_arch
            from .worker import SampleRenderer

            use_arch(self.arch)
            self._renderer = SampleRenderer(self.spec, self.seed)
            self._pid = os.getpid()
        return self._renderer

    def render(self, index: int) -> dict:
        """Sample ``index`` as a dict (failed samples included)."""
        return sample_dict(self.renderer().render(int(index)))

    def __iter__(self):
        from .. import runtime

        info = torch.utils.data.get_worker_info()
        w, n = (0, 1) if info is None else (info.id, info.num_workers)
        forked = (self._renderer is not None and self._pid != os.getpid()) or \
            (info is not None and self._renderer is None and runtime.arch() is not None)
        if forked:
            raise RuntimeError("OnTheFlyDataset in a DataLoader worker forked after Taichi started: pass "
                               "multiprocessing_context='spawn' to the DataLoader (Taichi's runtime does not "
                               "survive a fork)")
        r = self.renderer()
        for idx in worker_indices(self.start, self.stop, w, n):
            res = r.render(idx)
            if res.failed and not self.include_failed:
                continue
            yield sample_dict(res)

    def __getstate__(self):  # the renderer holds device buffers: rebuilt in each worker
        d = dict(self.__dict__)
        d["_renderer"], d["_pid"] = None, None
        return d
