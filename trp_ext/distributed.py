"""TRP across processes (torch.distributed): who projects which layer, and how results travel.

Every rank holds the same weights (DDP keeps them equal), so projecting every layer on every
rank repeats the same work W times. Sharded, each rank projects only its share of the layers,
balanced by estimated cost, in one ``lowrank_project`` call, and one all-gather hands every rank
all results, bit for bit the owner's.

Sharding pays when the compute it saves beats the all-gather it adds:

    replicated = C / F
    sharded    = max_share(C) / F + (W - 1) / W * B / bandwidth + (W - 1) * latency

with C the projection's work in flops, F the device's rate on it, B the bytes of the gathered
results (the selected weights) and W the world size. :func:`choose_mode` applies this rule.
"""
import datetime
import importlib
import math
import os
from dataclasses import dataclass
from typing import List

import torch
import torch.distributed as dist

# Rates for the rule above, per device type: effective flop rate of lowrank_project on one device
# (measured on its benches, see bench/RESULTS.md) and the all-gather link of a typical host.
LINKS = {
    "cuda": {"flops": 2.0e11, "bandwidth": 150e9, "latency": 20e-6},  # NVLink-class intra-node
    "cpu": {"flops": 2.0e10, "bandwidth": 1.25e9, "latency": 50e-6},  # 10 GbE between hosts
}


def is_active():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank():
    return dist.get_rank() if is_active() else 0


def world_size():
    return dist.get_world_size() if is_active() else 1


def is_main_process():
    return rank() == 0


def matrix_cost(shape):
    """Flops of one projection of an m x n matrix: Gram of the smaller side plus its eigensolve."""
    m, n = shape
    k = min(m, n)
    return 2.0 * m * n * k + 10.0 * k ** 3


@dataclass
class ShardPlan:
    owner: List[int]  # owner[i]: the rank that projects matrix i
    world: int

    def owned(self, r):
        return [i for i, o in enumerate(self.owner) if o == r]


def plan_shards(shapes, world):
    """Longest-processing-time-first: biggest matrices first, each to the least loaded rank.

    Deterministic (ties broken by index and rank), so every rank computes the same plan.
    """
    load = [0.0] * world
    owner = [0] * len(shapes)
    for index in sorted(range(len(shapes)), key=lambda i: (-matrix_cost(shapes[i]), i)):
        target = min(range(world), key=lambda r: (load[r], r))
        owner[index] = target
        load[target] += matrix_cost(shapes[index])
    return ShardPlan(owner, world)


def predicted_seconds(shapes, element_bytes, world, device_type, flops=None, bandwidth=None, latency=None):
    """(replicated, sharded) seconds of one projection by the model in the module docstring."""
    link = LINKS["cuda" if device_type == "cuda" else "cpu"]
    flops = flops or link["flops"]
    bandwidth = bandwidth or link["bandwidth"]
    latency = link["latency"] if latency is None else latency
    total = sum(matrix_cost(s) for s in shapes)
    plan = plan_shards(shapes, world)
    largest_share = max(sum(matrix_cost(shapes[i]) for i in plan.owned(r)) for r in range(world))
    gathered = sum(m * n for m, n in shapes) * element_bytes
    sharded = largest_share / flops + (world - 1) / world * gathered / bandwidth + (world - 1) * latency
    return total / flops, sharded


def choose_mode(shapes, element_bytes, world, device_type, **rates):
    """'shard' when the model predicts sharding is faster for this world size, else 'replicate'."""
    if world <= 1:
        return "replicate"
    replicated, sharded = predicted_seconds(shapes, element_bytes, world, device_type, **rates)
    return "shard" if sharded < replicated else "replicate"


def all_gather_results(plan, local_indices, local_tensors, shapes, dtype, device):
    """Every rank's owned tensors to every rank, in one all-gather.

    ``shapes[i]``: matrix i's shape (the same on every rank); all have ``dtype`` and live on
    ``device``. Returns the full list.
    """
    world, me = plan.world, dist.get_rank()
    numel = [math.prod(shape) for shape in shapes]
    sizes = [sum(numel[i] for i in plan.owned(r)) for r in range(world)]
    width = max(sizes) if sizes else 0
    flat = torch.zeros(width, dtype=dtype, device=device)
    if local_tensors:
        packed = torch.cat([t.reshape(-1).to(dtype) for t in local_tensors])
        flat[: packed.numel()] = packed
    buffers = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(buffers, flat)
    out = [None] * len(shapes)
    for r in range(world):
        offset = 0
        for i in plan.owned(r):
            count = numel[i]
            out[i] = local_tensors[local_indices.index(i)] if r == me else \
                buffers[r][offset:offset + count].view(shapes[i])
            offset += count
    return out


def all_gather_ranks(plan, local_indices, local_ranks, device):
    """The per-matrix ranks of every owner, to every rank."""
    width = max(len(plan.owned(r)) for r in range(plan.world))
    mine = torch.full((width,), -1, dtype=torch.long, device=device)
    mine[: len(local_indices)] = local_ranks.to(device)
    buffers = [torch.empty_like(mine) for _ in range(plan.world)]
    dist.all_gather(buffers, mine)
    ranks = torch.empty(len(plan.owner), dtype=torch.long, device=device)
    for r in range(plan.world):
        owned = plan.owned(r)
        ranks[owned] = buffers[r][: len(owned)]
    return ranks


def init_from_env(backend=None, timeout_seconds=300):
    """Joins the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, ...), with a
    timeout on every collective so that a failed rank stops the others instead of hanging them."""
    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        # Without async error handling NCCL can block forever on a peer that died.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # DDP imports torch.distributed.nn.functional, whose functions take `group=group.WORLD` as a
    # default argument: imported after the group exists, they keep it alive in their defaults
    # for good, and destroy_process_group cannot free it. Its gloo threads then outlive the job
    # and are torn down with the interpreter, where they can abort the process (SIGABRT,
    # "terminate called without an active exception"). Imported first, the defaults are None.
    importlib.import_module("torch.distributed.nn.functional")

    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_seconds))
    return True
