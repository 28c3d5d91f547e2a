"""Shared test setup: a device parameter that covers CPU and CUDA (the repository's conftest.py
skips tests marked `cuda` when no GPU is visible)."""
import pytest

import trp_ext  # noqa: F401  (loads the ops)

CUDA = pytest.param("cuda", marks=pytest.mark.cuda)
DEVICES = ["cpu", CUDA]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param
