"""``generate``: render a dataset into HDF5 shards, on local processes or a Ray cluster.

Work is split into shards of ``shard_size`` consecutive sample indices; a shard is made by
exactly one worker, which renders its samples (:class:`~taichi_xray.datasets.worker.
SampleRenderer`: a warm Taichi runtime and the scene pipelines, built once per worker) and
writes one file (:mod:`~taichi_xray.datasets.writer`). Since every sample depends only on
``(seed, index)`` and the pipelines are deterministic, the bytes of every shard do not
depend on the engine or the number of workers.

Engines:

* ``workers=1``: in this process;
* ``workers>1``: a ``concurrent.futures.ProcessPoolExecutor`` with the "spawn" start
  method (Taichi's runtime does not survive a fork); on the CPU each process gets
  ``cores / workers`` Taichi threads, with CUDA each process one GPU
  (``CUDA_VISIBLE_DEVICES``, round robin);
* ``ray="local"`` or ``ray="HOST:PORT"``: Ray actors (one per GPU with ``num_gpus=1``,
  else one per CPU), each holding a renderer; an actor returns its shard's bytes and this
  process writes them, so no shared file system is needed for the output (the dataset,
  scene and mesh files must be readable at the same paths on every node).

Resuming: a shard whose ``.done.json`` marker and SHA-256 check out is kept; the others
(``.partial`` files of an interrupted run) are made again. Nothing is overwritten unless
``force=True``.

Test hook: the environment variable ``TAICHI_XRAY_DATASETS_CRASH_AT=INDEX`` makes a worker
exit abruptly (``os._exit(75)``) just before rendering sample INDEX, which leaves a
``.partial`` shard behind like a killed run.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .sampling import check_seed, parameter_names
from .spec import DatasetSpec, load_dataset
from .writer import (FORMAT, FORMAT_VERSION, MANIFEST, Layout, ShardWriter, read_marker, sha256_file, shard_is_done,
                     shard_name, write_json_atomic, write_marker)

__all__ = ["generate", "plan_shards", "make_shard", "layout_of", "GenerateError"]

log = logging.getLogger("taichi_xray")
CRASH_ENV = "TAICHI_XRAY_DATASETS_CRASH_AT"


class GenerateError(RuntimeError):
    """A worker failed (not a failed sample: those are recorded and the run goes on)."""


def plan_shards(n: int, shard_size: int) -> list[tuple[int, int, int]]:
    """[(shard, start, stop)] covering sample indices [0, n)."""
    return [(k, s, min(s + shard_size, n)) for k, s in enumerate(range(0, n, shard_size))]


def layout_of(spec: DatasetSpec) -> Layout:
    out = spec.output
    w, h = spec.image_size
    return Layout(w, h, out.float32, out.uint16, list(out.masks), list(out.path_lengths),
                  spec.landmark_names if out.landmarks else [], parameter_names(spec), out.compression,
                  out.compression_level)


def _version() -> str:
    import taichi_xray

    return taichi_xray.__version__


def _shard_attrs(spec: DatasetSpec, seed: int) -> dict:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "taichi_xray_version": _version(),
            "dataset_sha256": spec.sha256, "inputs_sha256": spec.inputs_sha256, "seed": seed}


def make_shard(renderer, layout: Layout, attrs: dict, k: int, start: int, stop: int, path, progress=None) -> dict:
    """Render samples [start, stop) into the HDF5 file ``path``; returns the shard's record
    (shard, file, start, stop, failed samples, arch)."""
    from .. import runtime

    crash = os.environ.get(CRASH_ENV)
    crash = int(crash) if crash not in (None, "") else None
    w = ShardWriter(path, layout, stop - start, dict(attrs, shard=k, start=start, stop=stop))
    failed = []
    try:
        for j, idx in enumerate(range(start, stop)):
            if crash == idx:
                os._exit(75)
            r = renderer.render(idx)
            w.write(j, r)
            if r.failed:
                failed.append({"index": idx, "attempts": r.attempts, "error": r.error})
            if progress is not None:
                progress(1)
    finally:
        w.close()
    return {"shard": k, "file": shard_name(k), "start": start, "stop": stop, "failed": failed,
            "arch": runtime.arch()}


def _finish(outdir: Path, partial: Path, info: dict) -> dict:
    final = outdir / info["file"]
    os.replace(partial, final)
    info = dict(info, sha256=sha256_file(final), bytes=final.stat().st_size)
    write_marker(outdir, info)
    return info


# ----------------------------------------------------------------------------------------
# workers
# ----------------------------------------------------------------------------------------
_W: dict = {}


def _start_worker(dataset, seed, arch, threads=None, gpu=None, expect_sha=None):
    """Taichi + the renderer in a worker process (or actor)."""
    if threads:
        os.environ["TI_CPU_MAX_NUM_THREADS"] = str(threads)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    import torch

    from .. import runtime
    from .worker import SampleRenderer

    torch.set_num_threads(1)
    runtime.init(arch) if arch else runtime.ensure_init()
    spec = load_dataset(dataset)
    if expect_sha is not None and spec.inputs_sha256 != expect_sha:
        raise GenerateError(f"{dataset}: the dataset, scene, mesh or shape-model files this worker reads differ "
                            f"from the coordinator's (inputs SHA-256 {spec.inputs_sha256[:12]} != "
                            f"{expect_sha[:12]}); every worker must read the same files")
    return SampleRenderer(spec, seed), layout_of(spec), _shard_attrs(spec, seed)


def _pool_init(dataset, seed, arch, threads, gpus, slots, progress_q, expect_sha):
    slot = slots.get()
    gpu = gpus[slot % len(gpus)] if gpus else None
    _W["renderer"], _W["layout"], _W["attrs"] = _start_worker(dataset, seed, arch, threads, gpu, expect_sha)
    _W["progress"] = progress_q


def _pool_shard(k, start, stop, outdir):
    q = _W["progress"]
    partial = Path(outdir) / (shard_name(k) + ".partial")
    return make_shard(_W["renderer"], _W["layout"], _W["attrs"], k, start, stop, partial,
                      progress=lambda n: q.put(n))


class _RayShardActor:
    """A Ray actor: a warm renderer; :meth:`make` returns (shard bytes, record)."""

    def __init__(self, dataset, seed, arch, expect_sha, threads):
        self.renderer, self.layout, self.attrs = _start_worker(dataset, seed, arch, threads, None, expect_sha)

    def make(self, k, start, stop):
        with tempfile.TemporaryDirectory(prefix="taichi_xray_shard_") as d:
            p = Path(d) / shard_name(k)
            info = make_shard(self.renderer, self.layout, self.attrs, k, start, stop, p)
            return p.read_bytes(), info


def _cuda_gpus(arch) -> list[int]:
    """GPU ids for local workers when the kernels run on CUDA (none otherwise)."""
    if arch not in (None, "auto", "cuda"):
        return []
    if (arch or os.environ.get("TAICHI_XRAY_ARCH", "auto")).lower() not in ("auto", "cuda"):
        return []
    import ctypes.util

    if ctypes.util.find_library("cuda") is None:
        return []
    try:
        import torch

        n = torch.cuda.device_count()
    except Exception:  # pragma: no cover
        n = 0
    if n == 0:
        vis = os.environ.get("CUDA_VISIBLE_DEVICES")
        if vis:
            return [int(x) for x in vis.split(",") if x.strip().isdigit()]
        import subprocess

        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
            n = sum(1 for ln in out.splitlines() if ln.startswith("GPU "))
        except (OSError, subprocess.SubprocessError):
            n = 0
    return list(range(n))


# ----------------------------------------------------------------------------------------
# engines
# ----------------------------------------------------------------------------------------
def _run_inprocess(spec, dataset, seed, arch, tasks, outdir, on_done, bar):
    from ..render import use_arch
    from .worker import SampleRenderer

    use_arch(arch)
    r = SampleRenderer(spec, seed)
    layout, attrs = layout_of(spec), _shard_attrs(spec, seed)
    for k, start, stop in tasks:
        partial = outdir / (shard_name(k) + ".partial")
        on_done(make_shard(r, layout, attrs, k, start, stop, partial, progress=bar.update), None)


def _run_processes(spec, dataset, seed, arch, workers, tasks, outdir, on_done, bar):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    gpus = _cuda_gpus(arch)
    threads = None if gpus else max(1, (os.cpu_count() or 1) // workers)
    slots, progress = ctx.Queue(), ctx.Queue()
    for i in range(workers):
        slots.put(i)
    ex = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_pool_init,
                                initargs=(str(dataset), seed, arch, threads, gpus, slots, progress,
                                          spec.inputs_sha256))
    futs = {ex.submit(_pool_shard, k, s, e, str(outdir)): k for k, s, e in tasks}
    try:
        pending = set(futs)
        while pending:
            done, pending = cf.wait(pending, timeout=0.2, return_when=cf.FIRST_COMPLETED)
            _drain(progress, bar)
            errors = []
            for f in sorted(done, key=lambda f: futs[f]):  # keep every finished shard before raising
                try:
                    info = f.result()
                except cf.process.BrokenProcessPool as exc:
                    errors.append(GenerateError(f"a worker process died while making shard {futs[f]} ({exc}); rerun "
                                                "the same command to resume"))
                    continue
                except Exception as exc:
                    errors.append(exc)
                    continue
                on_done(info, None)
            if errors:
                raise errors[0]
        _drain(progress, bar)
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def _drain(q, bar):
    import queue

    n = 0
    while True:
        try:
            n += q.get_nowait()
        except queue.Empty:
            break
    if n:
        bar.update(n)


def _run_ray(address, spec, dataset, seed, arch, workers, tasks, outdir, on_done, bar):
    try:
        import ray
    except ImportError:
        raise GenerateError("--ray needs Ray: pip install 'ray==2.60.0'") from None
    own = False
    if not ray.is_initialized():
        if address == "local":
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
        own = True
    actors = []
    try:
        res = ray.cluster_resources()
        n_gpu, n_cpu = int(res.get("GPU", 0)), max(1, int(res.get("CPU", 1)))
        use_gpu = n_gpu > 0 and (arch or os.environ.get("TAICHI_XRAY_ARCH", "auto")) in ("auto", "cuda")
        W = workers or (n_gpu if use_gpu else n_cpu)
        W = max(1, min(W, len(tasks)))
        env = {"TAICHI_XRAY_ARCH": "cuda" if use_gpu else (arch if arch and arch != "auto" else "cpu")}
        opts = {"num_gpus": 1, "num_cpus": 1} if use_gpu else {"num_cpus": 1}
        Actor = ray.remote(**opts)(_RayShardActor)
        threads = None if use_gpu else 1
        actors = [Actor.options(runtime_env={"env_vars": env}).remote(str(Path(dataset).resolve()), seed,
                                                                       env["TAICHI_XRAY_ARCH"], spec.inputs_sha256,
                                                                       threads) for _ in range(W)]
        queue = list(tasks)
        running = {}
        for a in actors:
            if queue:
                t = queue.pop(0)
                running[a.make.remote(*t)] = (a, t)
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            ref = done[0]
            a, t = running.pop(ref)
            try:
                data, info = ray.get(ref)
            except Exception as exc:
                raise GenerateError(f"Ray worker failed on shard {t[0]}: {exc}") from None
            partial = outdir / (shard_name(t[0]) + ".partial")
            with open(partial, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            bar.update(t[2] - t[1])
            on_done(info, None)
            if queue:
                t = queue.pop(0)
                running[a.make.remote(*t)] = (a, t)
    finally:
        for a in actors:
            try:
                ray.kill(a)
            except Exception:  # pragma: no cover
                pass
        if own:
            ray.shutdown()


# ----------------------------------------------------------------------------------------
# the command
# ----------------------------------------------------------------------------------------
def _our_files(outdir: Path) -> list[Path]:
    pats = ("shard-*.h5", "shard-*.done.json", "shard-*.partial", MANIFEST, MANIFEST + ".partial")
    out = []
    for p in pats:
        out += sorted(outdir.glob(p))
    return out


def _manifest(spec, dataset, seed, n, shard_size, layout, infos, complete) -> dict:
    shards = [infos[k] for k in sorted(infos)]
    failed = sorted(({"index": f["index"], "shard": s["shard"], "attempts": f["attempts"], "error": f["error"]}
                     for s in shards for f in s["failed"]), key=lambda f: f["index"])
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "taichi_xray_version": _version(),
        "dataset": {"file": Path(dataset).name, "sha256": spec.sha256, "inputs_sha256": spec.inputs_sha256,
                    "name": spec.name, "description": spec.description,
                    "scenes": [p.name for p in spec.scene_paths], "toml": spec.raw},
        "seed": seed, "samples": n, "shard_size": shard_size, "layout": layout.to_json(),
        "randomness": "numpy SeedSequence([seed, index]) per sample; re-draw a uses SeedSequence([seed, index, a])",
        "shards": shards, "n_failed": len(failed), "failed": failed, "complete": complete,
    }


def _same_run(old: dict, new: dict) -> list[str]:
    """What differs between an existing manifest and this run (empty: resumable)."""
    diffs = []
    for key, label in (("format_version", "format version"), ("taichi_xray_version", "taichi_xray version"),
                       ("seed", "seed"), ("shard_size", "shard size"), ("layout", "layout")):
        if old.get(key) != new.get(key):
            diffs.append(f"{label} {old.get(key)!r} -> {new.get(key)!r}")
    od, nd = old.get("dataset", {}), new["dataset"]
    if od.get("inputs_sha256") != nd["inputs_sha256"]:
        diffs.append("the dataset, scene, mesh or shape-model files changed (inputs SHA-256 "
                     f"{str(od.get('inputs_sha256'))[:12]} -> {nd['inputs_sha256'][:12]})")
    return diffs


def generate(dataset, outdir, samples: int, *, seed: int = 0, workers: int | None = None, ray: str | None = None,
             shard_size: int = 64, force: bool = False, progress: bool = True, arch: str | None = None) -> dict:
    """Render ``samples`` samples of the dataset file ``dataset`` into ``outdir``.

    seed : the dataset seed (sample i uses ``SeedSequence([seed, i])``). workers : local
    worker processes (default: one per GPU with CUDA, else 1) or Ray actors (default: one
    per GPU, else one per CPU of the cluster). ray : None (local), "local" (start a Ray
    instance here, or use the one already initialised) or a cluster address.
    shard_size : samples per shard file. force : replace an existing dataset in ``outdir``
    (else an interrupted run with the same settings is resumed, and anything else is an
    error). progress : tqdm bar on stderr. arch : Taichi backend of the workers.

    Returns the manifest (also written to ``outdir/manifest.json``). Failed samples (every
    re-draw raised NestingError/GeometryError) keep their slot, marked failed, and are listed
    in the manifest and logged as warnings.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    dataset = Path(dataset)
    seed = check_seed(seed)
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples!r}")
    if isinstance(shard_size, bool) or not isinstance(shard_size, (int, np.integer)) or shard_size < 1:
        raise ValueError(f"shard size must be a positive integer, got {shard_size!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, (int, np.integer))
                                or workers < 1):
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    try:
        import h5py  # noqa: F401
    except ImportError:
        raise GenerateError("taichi-xray generate writes HDF5 files and needs h5py: pip install 'h5py>=3.8'") from None
    spec = load_dataset(dataset)
    layout = layout_of(spec)
    n, K = int(samples), int(shard_size)
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise NotADirectoryError(f"output {outdir} exists and is not a folder")
    plan = plan_shards(n, K)
    new = _manifest(spec, dataset, seed, n, K, layout, {}, False)
    done: dict = {}
    if outdir.is_dir():
        mpath = outdir / MANIFEST
        ours = _our_files(outdir)
        if force:
            for p in ours:
                p.unlink()
        elif mpath.is_file():
            import json

            try:
                old = json.loads(mpath.read_text())
            except ValueError:
                raise FileExistsError(f"{mpath} is not a readable manifest; use --force to replace the dataset in "
                                      f"{outdir}") from None
            diffs = _same_run(old, new)
            if diffs:
                raise FileExistsError(f"{outdir} holds a dataset made with other settings ({'; '.join(diffs)}); use "
                                      "--force to replace it, or another folder")
            ranges = {k: (s, e) for k, s, e in plan}
            stale = []
            for p in sorted(outdir.glob("shard-*.done.json")):
                k = int(p.name[6:12])
                m = read_marker(outdir, k) or {}
                if k not in ranges or (m.get("start"), m.get("stop")) != ranges[k]:
                    stale.append(p.name)
                    continue
                ok = shard_is_done(outdir, k, *ranges[k])
                if ok is None:
                    log.warning("taichi-xray generate: %s does not match its checksum; making it again",
                                shard_name(k))
                    p.unlink()
                else:
                    done[k] = ok
            if stale:
                raise FileExistsError(f"{outdir}: finished shards ({', '.join(stale[:4])}) cover other sample ranges "
                                      f"than this run ({n} samples in shards of {K}); use --force to replace them")
            for p in list(outdir.glob("shard-*.partial")) + list(outdir.glob("shard-*.h5")):
                if p.suffix == ".partial" or int(p.name[6:12]) not in done:
                    p.unlink()
        elif ours:
            raise FileExistsError(f"{outdir} holds dataset files ({ours[0].name}, ...) but no {MANIFEST}; use --force "
                                  "to replace them, or another folder")
    outdir.mkdir(parents=True, exist_ok=True)
    tasks = [t for t in plan if t[0] not in done]
    infos = dict(done)
    write_json_atomic(outdir / MANIFEST, _manifest(spec, dataset, seed, n, K, layout, infos, False))
    if done:
        log.info("resuming %s: %d of %d shards already finished", outdir, len(done), len(plan))

    def on_done(info, _):
        archs = {i.get("arch") for i in infos.values()}
        if archs and info.get("arch") not in archs:  # bytes differ between backends: never mix them
            (outdir / (info["file"] + ".partial")).unlink(missing_ok=True)
            raise GenerateError(f"{outdir}: shard {info['shard']} was rendered on {info.get('arch')} but the "
                                f"finished shards on {', '.join(sorted(map(str, archs)))}; resume on the same "
                                "backend (--arch) or use --force")
        info = _finish(outdir, outdir / (info["file"] + ".partial"), info)
        infos[info["shard"]] = info
        for f in info["failed"]:
            log.warning("taichi-xray generate: sample %d failed after %d attempts: %s", f["index"], f["attempts"],
                        f["error"])
        write_json_atomic(outdir / MANIFEST, _manifest(spec, dataset, seed, n, K, layout, infos, False))

    bar = tqdm(total=n, initial=sum(e - s for k, s, e in plan if k in done), unit="img", desc="generate",
               file=sys.stderr, disable=not progress, dynamic_ncols=True)
    try:
        if tasks:
            if ray is not None:
                _run_ray(ray, spec, dataset, seed, arch, workers, tasks, outdir, on_done, bar)
            else:
                W = workers if workers is not None else max(1, len(_cuda_gpus(arch)))
                W = min(W, len(tasks))
                if W == 1:
                    _run_inprocess(spec, dataset, seed, arch, tasks, outdir, on_done, bar)
                else:
                    _run_processes(spec, dataset, seed, arch, W, tasks, outdir, on_done, bar)
    finally:
        bar.close()
    man = _manifest(spec, dataset, seed, n, K, layout, infos, True)
    write_json_atomic(outdir / MANIFEST, man)
    dt = time.perf_counter() - t0
    made = sum(e - s for _, s, e in tasks)
    log.info("wrote %d samples (%d made now) in %d shards to %s, %d failed; %.1f s (%.2f img/s)", n, made, len(plan),
             outdir, man["n_failed"], dt, made / dt if dt > 0 else 0.0)
    return man
