"""Shared bench setup. Convention for every bench file:

- ``benchmark.group`` names one case (a shape, a weight set); every variant of that case shares it,
  so pytest-benchmark prints ours and the baselines side by side.
- ``benchmark.extra_info["variant"]`` names the variant: ``"ours"`` for trp-ext, anything else is
  a baseline. ``bench/report.py`` turns the JSON into ratio tables (baseline median / ours median).
- ``benchmark.extra_info["flop_ratio"]`` (optional, on ``ours``): dense FLOPs / factored FLOPs;
  with a ``"dense"`` variant in the group the report adds realisation =
  (t_dense / t_ours) / flop_ratio.
- ``benchmark.extra_info["macs"]`` (optional, on ``ours``): ``{"dense": ..., "factored": ...}``,
  the multiply-adds of one timed call of the dense conv and of the factored pair (which the fused
  op computes too); ``bench/report.py --fma-peak`` turns them into fractions of the machine's peak.
- ``benchmark.extra_info["alternating_ms"]`` (optional, on ``ours``): ours' and the baselines'
  medians timed in alternation, call by call (see ``measure``); the report gives their ratios as
  a second table.
"""
import statistics
import time

import pytest
import torch

import trp_ext  # noqa: F401

CUDA = pytest.param("cuda", marks=pytest.mark.cuda)


@pytest.fixture(autouse=True, scope="session")
def like_for_like_cuda_baselines():
    """float32 baselines in float32: torch lets cuDNN convs run float32 on TF32 tensor cores by
    default, a lower precision than ours computes in. And cuDNN picks its fastest algorithm for
    each shape (benchmark mode; the warm-up rounds absorb the search), so that ours is measured
    against the strongest cuDNN baseline."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark = saved


def pytest_benchmark_update_machine_info(config, machine_info):
    """Records which CPU code ran: ours (``trp_ext._C.cpu_kernels()``, and the width of its
    multiply-add loops, ``cpu_vector_bits()``) and torch's (ATen's CPU
    capability, which oneDNN's convs and MKL follow too). The development VM once changed from an
    AVX2 CPU to an AVX-512 one between two runs, which moved every ratio."""
    machine_info["trp_ext_cpu_kernels"] = trp_ext._C.cpu_kernels()
    machine_info["trp_ext_cpu_vector_bits"] = trp_ext._C.cpu_vector_bits()
    machine_info["aten_cpu_capability"] = torch.backends.cpu.get_cpu_capability()


def synchronizing(fn, device):
    """Wraps fn so that a timed call includes the GPU work it launched."""
    if torch.device(device).type != "cuda":
        return fn

    def run(*args, **kwargs):
        out = fn(*args, **kwargs)
        torch.cuda.synchronize()
        return out

    return run


def measure(benchmark, fn, variant, device="cpu", rounds=20, warmup_rounds=3, iterations=1, alternates=None,
            **extra):
    """Times fn with benchmark.pedantic and tags it with its variant (see module docstring).

    alternates: optional {variant: fn} of the same case. After fn's own rounds, fn and every
    alternate are then timed in turn, one call each per cycle, for as many cycles as fn had rounds
    (after warmup_rounds cycles that are not kept); the medians go to extra_info["alternating_ms"]
    (fn under its own variant name). This machine's speed drifts within seconds, and each
    variant's own test runs its rounds back to back at another moment, so a ratio of two tests
    partly measures the drift; alternating calls share it, and each follows a call of another
    variant, so none of them runs with its caches to itself.
    """
    benchmark.extra_info["variant"] = variant
    benchmark.extra_info["device"] = str(device)
    benchmark.extra_info.update(extra)
    timed = synchronizing(fn, device)
    result = benchmark.pedantic(timed, rounds=rounds, iterations=iterations, warmup_rounds=warmup_rounds)
    if alternates and not benchmark.disabled:
        cycle = {variant: timed, **{name: synchronizing(other, device) for name, other in alternates.items()}}
        times = {name: [] for name in cycle}
        for _ in range(warmup_rounds + rounds):
            for name, call in cycle.items():
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
        benchmark.extra_info["alternating_ms"] = {
            name: statistics.median(samples[warmup_rounds:]) * 1e3 for name, samples in times.items()}
    return result
