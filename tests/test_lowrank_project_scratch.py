"""The CPU lowrank_project keeps its work buffers between calls (csrc/cpu/scratch_pool.h).

Before the pool, each cold call of ResNet-56's weights (spatial scheme: 48 x 48 to 192 x 192)
page-faulted ~1,400 pages back in (the bench, two threads): glibc had handed the previous call's
freed float64 copies, Gram matrices and eigen workspaces back to the kernel. When it does so
depends on its adaptive thresholds, so the count runs in a fresh process with them fixed: blocks
from 256 KiB up (a 192 x 192 float64 copy is 288 KiB) are mmapped and unmapped on free, and the
heap is never trimmed (torch's outputs, 144 KiB at most here, stay on the heap).
Measured per call, without the pool: 95-131 on one thread, 933-1494 on two; with it: 0-2 on one,
and 0-65 on two (a thread's pool may lack a block another thread's holds, and torch's outputs
grow the threads' malloc arenas now and then; more so on a loaded machine).
"""
import os
import subprocess
import sys
import threading

import pytest
import torch

from trp_ext import ops

COUNT_FAULTS = r"""
import resource, torch
from trp_ext import _reference as ref, ops
from trp_ext.models import build_model
from trp_ext.selection import select_layers
torch.set_num_threads({threads})
gen = torch.Generator().manual_seed(0)
mats = []
for _, conv in select_layers(build_model("resnet56", num_classes=10)):
    m, n = ref.conv_weight_to_matrix(conv.weight, "spatial").shape
    k = min(m, n)
    u, _ = torch.linalg.qr(torch.randn(m, k, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64))
    s = torch.exp(-torch.arange(k, dtype=torch.float64) / (k / 8))
    mats.append(((u * s) @ v.T).float())
for _ in range(3):
    ops.lowrank_project(mats, 0.99)
calls = 5
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(calls):
    result = ops.lowrank_project(mats, 0.99)
    del result
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls)
"""

MAX_FAULTS_PER_CALL = {1: 60, 2: 200}  # by thread count: below the lowest counts without the pool
FIXED_MALLOC_THRESHOLDS = "glibc.malloc.mmap_threshold=262144:glibc.malloc.trim_threshold=1073741824"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts page faults as Linux reports them")
@pytest.mark.parametrize("threads", [1, 2])
def test_repeated_cold_calls_do_not_fault_their_buffers_in_again(threads):
    env = dict(os.environ, GLIBC_TUNABLES=FIXED_MALLOC_THRESHOLDS)
    result = subprocess.run([sys.executable, "-c", COUNT_FAULTS.format(threads=threads)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    faults = float(result.stdout.strip().splitlines()[-1])
    assert faults < MAX_FAULTS_PER_CALL[threads], f"{faults:.0f} page faults per call"


def _matrix_sets():
    sets = []
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        # 96 x 96 and larger: float64 copies of 72 KiB and up, which come from the pools.
        shapes = [(192, 192), (96, 96), (64, 576), (300, 200), (16, 144)]
        sets.append([torch.randn(m, n, generator=gen) * torch.logspace(0, -3, m).unsqueeze(1)
                     for m, n in shapes])
    return sets


def test_calls_from_several_threads_match_one_at_a_time():
    # Buffers freed on one thread go to that thread's pool, and may then serve another matrix
    # of another call: the results must not notice.
    sets = _matrix_sets()
    cold = [ops.lowrank_project(mats, 0.95, want_subgradient=True) for mats in sets]
    warm = [ops.lowrank_project(mats, 0.95, bases=c.bases, want_subgradient=True)
            for mats, c in zip(sets, cold)]
    mismatches = []

    def run(thread):
        for call in range(6):
            i = (thread + call) % len(sets)
            use_warm = call % 2 == 1
            got = ops.lowrank_project(sets[i], 0.95, bases=cold[i].bases if use_warm else None,
                                      want_subgradient=True)
            want = warm[i] if use_warm else cold[i]
            same = torch.equal(got.ranks, want.ranks) and all(
                torch.equal(a, b) for a, b in zip(got.projected + got.subgradients + got.bases,
                                                  want.projected + want.subgradients + want.bases))
            if not same:
                mismatches.append((thread, call, i))

    threads = [threading.Thread(target=run, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not mismatches
