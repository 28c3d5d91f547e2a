"""`make bench` and bench/gpu_check.sh run `pytest bench`: its bench_*.py files must be collected.

pytest's default file pattern is test_*.py, under which `pytest bench` found no test at all
(exit code 5), so `make bench` failed and the GPU check's bench step measured nothing.
"""
import functools
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_FILES = sorted(p.name for p in (ROOT / "bench").glob("bench_*.py"))


@functools.lru_cache(maxsize=None)
def _collect(*args):
    done = subprocess.run([sys.executable, "-m", "pytest", "bench", "--collect-only", "-q",
                           "-p", "no:cacheprovider", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_pytest_bench_collects_every_bench_file():
    assert BENCH_FILES, "no bench_*.py under bench/"
    out = _collect()
    for name in BENCH_FILES:
        assert f"bench/{name}::" in out, f"{name} not collected by `pytest bench`"


def test_the_cuda_marker_selects_the_gpu_benches():
    # bench/gpu_check.sh selects its benches with -m cuda (collected here, skipped without a GPU).
    out = _collect("-m", "cuda")
    assert "bench/bench_factored_conv.py::test_cuda[" in out
    assert "bench/bench_projection.py::test_cold[" in out and "-cuda]" in out
    assert "bench/bench_end_to_end.py::test_end_to_end[" in out
    assert "::test_cpu[" not in out


def test_end_to_end_cuda_cases_carry_the_marker():
    # Its CUDA cases once put the marked param inside a tuple: pytest passed the ParameterSet
    # as the device, without the mark (no skip on a CPU machine, not selected by -m cuda).
    cuda = [line for line in _collect("-m", "cuda").splitlines() if "bench_end_to_end.py::" in line]
    cpu = [line for line in _collect("-m", "not cuda").splitlines() if "bench_end_to_end.py::" in line]
    assert len(cuda) == 18 and len(cpu) == 9, (cuda, cpu)
    assert all("-cuda-" in line for line in cuda) and not any("cuda" in line for line in cpu)
