"""Training data at scale: dataset files, per-sample sampling, HDF5 shards, local/Ray generation,
PyTorch datasets (see docs/datasets.md).

* :func:`load_dataset` - read and validate a dataset file (TOML) -> :class:`DatasetSpec`;
* :func:`draw` - the parameters of sample ``index`` from ``SeedSequence([seed, index])``;
* :class:`SampleRenderer` - render samples with warm, deterministic pipelines;
* :func:`generate` - write a dataset (shards + manifest) on local processes or Ray;
* :class:`ShardedDataset` / :class:`OnTheFlyDataset` (``taichi_xray.datasets.torch``) -
  read it back (map-style) or render the same samples during training (iterable).
"""
from .spec import DatasetError, DatasetSpec, Dist, load_dataset, parse_dataset
from .sampling import SampleParams, draw, parameter_names, seed_sequence
from .worker import SampleRenderer, SampleResult
from .generate import GenerateError, generate
from .torch import OnTheFlyDataset, ShardedDataset

__all__ = ["DatasetError", "DatasetSpec", "Dist", "load_dataset", "parse_dataset", "SampleParams", "draw",
           "parameter_names", "seed_sequence", "SampleRenderer", "SampleResult", "GenerateError", "generate",
           "OnTheFlyDataset", "ShardedDataset"]
