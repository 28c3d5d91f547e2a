"""Device operations of the batched lowrank_project (the CUDA kernel's algorithm), counted on its
CPU twin (`ops.cpu_batched_projection("always")`), where no GPU is.

On a GPU each ATen operation the algorithm issues is a kernel launch or a copy, and each of its own
kernels and uploads one more; views and allocations are none. Its wall time on the H200 was the
host's cost of issuing them (~23 us each: bench/RESULTS.md), so their number bounds its speed.
The twin issues the same ATen operations, and marks its own kernels and uploads with named
profiler ranges (``lowrank_project_batched::op::<name>``); `count_ops` counts both per phase
(``lowrank_project_batched::<phase>`` ranges). The count is a proxy: ATen's CUDA Cholesky,
triangular solve and eigh launch several kernels each, the twin's calls to them count one.
"""
import collections

import torch
from torch.profiler import ProfilerActivity, profile

from trp_ext import ops

PHASE = "lowrank_project_batched::"
OWN_OP = PHASE + "op::"
# Views, reshapes, allocations and metadata: no device work.
NO_DEVICE_WORK = frozenset(
    "aten::" + name for name in (
        "empty", "empty_like", "empty_strided", "view", "select", "narrow", "slice", "as_strided",
        "transpose", "t", "expand", "unsqueeze", "squeeze", "permute", "reshape", "_reshape_alias",
        "_unsafe_view", "alias", "flatten", "unbind", "split", "chunk", "detach", "lift_fresh",
        "resize_", "set_", "result_type", "is_nonzero", "conj", "resolve_conj", "resolve_neg",
        "pin_memory", "_pin_memory", "is_pinned", "item", "_local_scalar_dense", "contiguous"))


def count_ops(fn):
    """Runs fn() (one lowrank_project call, on the CPU twin) under the profiler; returns a Counter of
    device operations per phase ("other" outside the named phases), and their total under None."""
    with ops.cpu_batched_projection("always"):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
    calls = [e for e in prof.events() if e.name == "trp_ext::lowrank_project"]
    if len(calls) != 1:
        raise ValueError(f"count_ops: expected one lowrank_project call, saw {len(calls)}")
    counts = collections.Counter()

    def walk(event, phase):
        for child in event.cpu_children:
            if child.name.startswith(OWN_OP):
                counts[phase] += 1
            elif child.name.startswith(PHASE):
                walk(child, child.name[len(PHASE):] if phase == "other" else phase)
            elif child.name not in NO_DEVICE_WORK:
                counts[phase] += 1

    walk(calls[0], "other")
    counts[None] = sum(counts.values())
    return counts
