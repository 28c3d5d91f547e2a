"""Shared bench setup. Convention for every bench file:

- ``benchmark.group`` names one case (a shape, a weight set); every variant of that case shares it,
  so pytest-benchmark prints ours and the baselines side by side.
- ``benchmark.extra_info["variant"]`` names the variant: ``"ours"`` for trp-ext, anything else is
  a baseline. ``bench/report.py`` turns the JSON into ratio tables (baseline median / ours median).
- ``benchmark.extra_info["flop_ratio"]`` (optional, on ``ours``): dense FLOPs / factored FLOPs;
  with a ``"dense"`` variant in the group the report adds realisation =
  (t_dense / t_ours) / flop_ratio.
"""
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


def measure(benchmark, fn, variant, device="cpu", rounds=20, warmup_rounds=3, iterations=1, **extra):
    """Times fn with benchmark.pedantic and tags it with its variant (see module docstring)."""
    benchmark.extra_info["variant"] = variant
    benchmark.extra_info["device"] = str(device)
    benchmark.extra_info.update(extra)
    return benchmark.pedantic(synchronizing(fn, device), rounds=rounds, iterations=iterations,
                              warmup_rounds=warmup_rounds)
