"""Projection step of TRP on ResNet-50's selected conv weights with 1 and 2 gloo processes (CPU).

The bench process is rank 0; helper processes join as the other ranks and run the same
`trp.project()` calls, told when by a broadcast. Each process gets cores / world threads, so the
runs compare equal hardware. Variants: "1proc" (one process projects everything), "ours"
(2 processes, sharded), "2proc-replicated" (2 processes, both project everything).
"""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trp_ext import TRP
from trp_ext.models import resnet50

from conftest import measure

CORES = max(1, len(os.sched_getaffinity(0)))
GROUP = "resnet50 channel projection, gloo"


def _model():
    torch.manual_seed(0)
    return resnet50()


def _helper(index, world, port, mode):
    rank = index + 1  # this bench process is rank 0
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, CORES // world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    trp = TRP(_model(), period=1, lam=0.0, distributed=mode)
    command = torch.zeros(1)
    while True:
        dist.broadcast(command, 0)
        if command.item() == 0:
            break
        trp.project()
    dist.destroy_process_group()


@pytest.fixture(params=[("ours", "shard"), ("2proc-replicated", "replicate")], ids=["sharded", "replicated"])
def two_process_trp(request):
    variant, mode = request.param
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.start_processes(_helper, args=(2, port, mode), nprocs=1, start_method="spawn", join=False)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, CORES // 2))
    dist.init_process_group("gloo", rank=0, world_size=2)
    trp = TRP(_model(), period=1, lam=0.0, distributed=mode)
    command = torch.ones(1)

    def project():
        dist.broadcast(command, 0)
        trp.project()

    yield variant, project, trp
    dist.broadcast(torch.zeros(1), 0)
    context.join()
    dist.destroy_process_group()
    torch.set_num_threads(threads)


def test_one_process(benchmark):
    benchmark.group = GROUP
    trp = TRP(_model(), period=1, lam=0.0)
    measure(benchmark, trp.project, "1proc", rounds=5, warmup_rounds=1)


def test_two_processes(benchmark, two_process_trp):
    variant, project, trp = two_process_trp
    benchmark.group = GROUP
    measure(benchmark, project, variant, rounds=5, warmup_rounds=1, mode=trp._mode)
