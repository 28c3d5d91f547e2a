"""The build and the loader: CUDA kernels compiled when nvcc is present, clear load errors."""
import os
import shutil
import sys
import threading

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


def test_unbuilt_checkout_says_the_library_is_not_built(tmp_path):
    # A source tree that was never compiled: Python's own message blames "a circular import".
    import subprocess

    shutil.copytree(os.path.dirname(trp_ext.__file__), tmp_path / "trp_ext",
                    ignore=shutil.ignore_patterns("_C*", "__pycache__"))
    # Without the editable install's finder, which would find the built library of this checkout.
    script = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in "
              "getattr(f, '__module__', '')]; import trp_ext")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode != 0
    assert "trp_ext._C is not built" in result.stderr and "--no-build-isolation" in result.stderr
    assert "circular" not in result.stderr


def test_library_built_for_other_torch_gives_rebuild_hint(monkeypatch):
    monkeypatch.setattr(_ext, "_running_torch_version", lambda: (1, 0, 0))
    with pytest.raises(_ext.ExtensionLoadError, match="compiled against torch .* but torch"):
        _ext.load_library()


def test_cpu_kernels_are_compiled_with_intra_op_parallelism():
    # at::parallel_for is a header template: built without torch's OpenMP flag it silently runs
    # every CPU kernel on one thread.
    assert trp_ext.BUILD_INFO["intra_op_parallel"]


def _thread_cpu_ticks():
    """{thread id: user + system CPU ticks} of this process's threads (Linux /proc)."""
    ticks = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        ticks[tid] = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return ticks


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs 2 intra-op threads")
def test_cpu_kernel_work_is_shared_between_threads():
    # A serial build passes every other test: only the threads' CPU time tells. Ten calls are
    # ~0.4 s of work (2-core AVX2 VM), so a helper thread that does its half shows ~20 ticks of
    # 10 ms, as many as the calling thread; a serial kernel leaves the helpers at the few ticks
    # they spin between calls.
    x = torch.randn(32, 256, 14, 14)
    w1, w2 = torch.randn(64, 256, 3, 3), torch.randn(256, 64, 1, 1)
    call = lambda: trp_ext.ops.factored_conv2d(x, w1, w2, None, (1, 1), (1, 1), (1, 1), "channel", None)
    call()  # starts the worker threads
    before = _thread_cpu_ticks()
    for _ in range(10):
        call()
    after = _thread_cpu_ticks()
    main = str(threading.get_native_id())
    used = {tid: after[tid] - before.get(tid, 0) for tid in after}
    helpers = max((ticks for tid, ticks in used.items() if tid != main), default=0)
    assert used[main] > 0
    assert helpers >= 0.25 * used[main], used
