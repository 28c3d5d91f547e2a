"""Shared bench setup. Convention for every bench file:

- ``benchmark.group`` names one case (a shape, a weight set); every variant of that case shares it,
  so pytest-benchmark prints ours and the baselines side by side.
- ``benchmark.extra_info["variant"]`` names the variant: ``"ours"`` for trp-ext, anything else is
  a baseline. ``bench/report.py`` turns the JSON into ratio tables (baseline median / ours median).
- ``benchmark.extra_info["flop_ratio"]`` (optional, on ``ours``): dense FLOPs / factored FLOPs;
  with a ``"dense"`` variant in the group the report adds realisation =
  (t_dense / t_ours) / flop_ratio.
- ``benchmark.extra_info["alternating_ms"]`` (optional, on ``ours``): the baselines' medians timed
  in alternation with ours' rounds (see ``measure``); the report gives their ratios as a second
  table.
"""
import statistics
import time

import pytest
import torch

import trp_ext  # noqa: F401

CUDA = pytest.param("cuda", marks=pytest.mark.cuda)


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

    alternates: optional {variant: fn} of the same case. Each runs once, timed here, before every
    round of fn, and their medians go to extra_info["alternating_ms"]. This machine's speed drifts
    within seconds, and each variant's own test runs its rounds back to back at another moment, so
    a ratio of two tests partly measures the drift; alternating rounds share it.
    """
    benchmark.extra_info["variant"] = variant
    benchmark.extra_info["device"] = str(device)
    benchmark.extra_info.update(extra)
    setup = None
    if alternates:
        timed = {name: synchronizing(other, device) for name, other in alternates.items()}
        times = {name: [] for name in timed}

        def setup():
            for name, other in timed.items():
                start = time.perf_counter()
                other()
                times[name].append(time.perf_counter() - start)

    result = benchmark.pedantic(synchronizing(fn, device), rounds=rounds, iterations=iterations,
                                warmup_rounds=warmup_rounds, setup=setup)
    if alternates:
        # The first warmup_rounds runs went with ours' warm-up rounds (all of them when
        # pytest-benchmark is disabled and ran fn once).
        benchmark.extra_info["alternating_ms"] = {
            name: statistics.median(t[warmup_rounds:] or t) * 1e3 for name, t in times.items()}
    return result
