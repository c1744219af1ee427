"""``taichi-xray generate DATASET.toml -o OUTDIR --samples N``: render a training dataset.

Samples are drawn from the distributions of a dataset file (docs/datasets.md), rendered by
local worker processes (default) or Ray actors (``--ray local`` / ``--ray HOST:PORT``) and
written as HDF5 shards with a ``manifest.json``. Sample ``i`` depends only on ``(--seed,
i)``, so the same command writes the same bytes whatever the number of workers; a run that
was interrupted resumes where it stopped (finished shards are kept). Nothing is
overwritten without ``--force``.
"""
from __future__ import annotations

import sys

from .common import UsageError, add_arch_option, check_input_file, log

__all__ = ["add_parser", "run"]


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise UsageError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise UsageError(f"expected a positive integer, got {text!r}")
    return v


def _seed(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise UsageError(f"--seed must be a non-negative integer, got {text!r}") from None
    if v < 0:
        raise UsageError(f"--seed must be a non-negative integer, got {text!r}")
    return v


def add_parser(subparsers):
    g = subparsers.add_parser("generate", help="render a training dataset (HDF5 shards + manifest) from a dataset "
                                               "file, on local processes or a Ray cluster")
    g.add_argument("dataset", metavar="DATASET.toml", help="dataset file (TOML, see docs/datasets.md)")
    g.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created if needed)")
    g.add_argument("--samples", required=True, type=_positive_int, metavar="N", help="number of samples")
    g.add_argument("--seed", type=_seed, default=0, help="dataset seed: sample i uses SeedSequence([seed, i]) "
                                                         "(default 0)")
    g.add_argument("--workers", type=_positive_int, default=None, metavar="W",
                   help="local worker processes, or Ray actors with --ray (default: one per GPU with CUDA, "
                        "else 1 locally and one per CPU on Ray)")
    g.add_argument("--ray", metavar="ADDRESS|local", default=None,
                   help="run on Ray: 'local' starts a Ray instance on this machine, else the cluster address "
                        "(HOST:PORT or 'auto')")
    g.add_argument("--shard-size", type=_positive_int, default=64, metavar="K",
                   help="samples per shard file (default 64)")
    g.add_argument("--force", action="store_true", help="replace an existing dataset in OUTDIR (otherwise an "
                                                        "interrupted run with the same settings is resumed)")
    add_arch_option(g)
    g.set_defaults(func=run)
    return g


def run(args) -> int:
    from ..datasets.generate import GenerateError, generate

    check_input_file(args.dataset, "dataset file")
    if args.ray is not None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UsageError("--ray needs Ray: pip install 'ray==2.60.0' (or the extra taichi-xray[ray])") from None
    try:
        man = generate(args.dataset, args.output, args.samples, seed=args.seed, workers=args.workers, ray=args.ray,
                       shard_size=args.shard_size, force=args.force, progress=not getattr(args, "quiet", False),
                       arch=args.arch)
    except GenerateError as exc:
        print(f"taichi-xray: error: {exc}", file=sys.stderr)
        return 1
    n_sh = len(man["shards"])
    log.info("wrote %d samples in %d shard%s to %s (manifest.json)%s", man["samples"], n_sh, "" if n_sh == 1 else "s",
             args.output, f"; {man['n_failed']} failed (listed in the manifest)" if man["n_failed"] else "")
    return 0
