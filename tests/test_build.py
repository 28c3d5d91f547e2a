"""The build and the loader: CUDA kernels compiled when nvcc is present, clear load errors."""
import os
import shutil
import sys

import pytest
import torch

import trp_ext
from trp_ext import _ext


def _nvcc_available():
    cuda_home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    return shutil.which("nvcc") is not None or os.path.exists(os.path.join(cuda_home, "bin", "nvcc"))


@pytest.mark.skipif(os.environ.get("TRP_EXT_FORCE_CPU") == "1", reason="CPU-only build requested")
@pytest.mark.skipif(torch.version.cuda is None, reason="torch has no CUDA")
@pytest.mark.skipif(not _nvcc_available(), reason="nvcc not found")
def test_cuda_kernels_are_compiled_when_nvcc_is_present():
    # A silently CPU-only build must not pass CI on a machine that has nvcc.
    assert trp_ext.cuda_kernels_built()
    assert torch._C._dispatch_has_kernel_for_dispatch_key("trp_ext::energy_rank", "CUDA")


def test_cpu_kernels_are_registered():
    assert torch._C._dispatch_has_kernel_for_dispatch_key("trp_ext::energy_rank", "CPU")


def test_build_info_matches_running_torch():
    assert tuple(trp_ext.BUILD_INFO["torch_version"]) == _ext._running_torch_version()


def test_missing_library_gives_rebuild_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "trp_ext._C", None)  # makes `from trp_ext import _C` fail
    monkeypatch.delattr(trp_ext, "_C", raising=False)
    with pytest.raises(_ext.ExtensionLoadError, match="--no-build-isolation"):
        _ext.load_library()


def test_library_built_for_other_torch_gives_rebuild_hint(monkeypatch):
    monkeypatch.setattr(_ext, "_running_torch_version", lambda: (1, 0, 0))
    with pytest.raises(_ext.ExtensionLoadError, match="compiled against torch .* but torch"):
        _ext.load_library()
