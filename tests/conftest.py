import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("TAICHI_XRAY_ARCH", "cpu")

import taichi_xray  # noqa: E402

taichi_xray.init(os.environ["TAICHI_XRAY_ARCH"])

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "pelvis-ct"))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
