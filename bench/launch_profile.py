"""Device work, host syncs and host time of single calls, for the GPU runs (bench/gpu_check.sh).

    python bench/launch_profile.py [--device cuda]

For ResNet-56's lowrank_project (both schemes; cold, and warm from the previous call's bases, the
inputs bench_projection.py times; the spatial scheme's cold call also with torch.linalg.eigh for
the Gram matrices past the Jacobi kernel instead of cuSOLVER's batched solver) and factored_conv2d against the torch pair on two of
bench_factored_conv.py's layers (fp16, channels_last, batch 1, the GPU target's setting), prints
per call: the device operations a profiler records (kernels, copies, memsets), the host-side
stream and device synchronisations, the median wall time with the device drained before and
after, and the median host time until the call returns. A call whose wall time is its launches'
host cost is launch-bound, which the kernels' own speed cannot fix. Without a visible GPU it says
so and exits 0; `--device cpu` runs the same code on the CPU (no device operations to count),
and then counts the device operations of the CUDA kernel's algorithm on its CPU twin, per phase
(bench/op_count.py).
"""
import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

import bench_factored_conv as fconv
import bench_projection as projection
import op_count
from trp_ext import ops

REPEATS = 20
CONV_LAYERS = ((16, 16, 32), (512, 512, 7))  # (in, out, size): a CIFAR and an ImageNet layer
SYNC_NAMES = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def _drain(device):
    if device == "cuda":
        torch.cuda.synchronize()


def profile_call(fn, device):
    """(device operations, host synchronisations, median wall ms, median host ms) of fn()."""
    fn()  # warm-up: allocator, cuDNN and cuSOLVER handles, kernel selection
    _drain(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        _drain(device)
    events = prof.events()
    device_ops = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    syncs = sum(1 for e in events if e.name in SYNC_NAMES)
    wall, host = [], []
    for _ in range(REPEATS):
        _drain(device)
        start = time.perf_counter()
        fn()
        returned = time.perf_counter()
        _drain(device)
        wall.append(time.perf_counter() - start)
        host.append(returned - start)
    # The last drain is inside the profiled block: a sync there is ours, not the call's.
    syncs -= 1 if device == "cuda" else 0
    return device_ops, syncs, statistics.median(wall) * 1e3, statistics.median(host) * 1e3


def projection_calls(device):
    for scheme in ("channel", "spatial"):
        scenario = projection._scenario(f"resnet56/{scheme}", device)
        mats, bases = scenario["warm"], scenario["bases"]
        yield f"lowrank_project resnet56/{scheme} cold", lambda m=mats: ops.lowrank_project(m, projection.ENERGY)
        if scheme == "spatial":  # its 192 x 192 Gram matrices: cuSOLVER's batched solver, then torch's
            yield f"lowrank_project resnet56/{scheme} cold, torch eigh", lambda m=mats: _torch_eigh_call(m)
        yield (f"lowrank_project resnet56/{scheme} warm",
               lambda m=mats, b=bases: ops.lowrank_project(m, projection.ENERGY, bases=b))


def _torch_eigh_call(mats):
    with ops.cuda_batched_eigh("never"):
        return ops.lowrank_project(mats, projection.ENERGY)


def conv_calls(device):
    dtype = torch.float16 if device == "cuda" else torch.float32
    for c, n, size in CONV_LAYERS:
        layer = next(layer for layer in fconv.LAYERS if (layer.c, layer.n, layer.h, layer.stride) == (c, n, size, (1, 1)))
        operands = fconv._operands(layer, 1, "channel", device, dtype, channels_last=True)
        for variant in ("ours", "pair"):
            yield (f"factored_conv2d {variant} channel {fconv._name(layer, 1)}",
                   fconv._variant_fn(variant, layer, "channel", *operands))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("launch_profile: no GPU visible; nothing measured")
        return
    print(f"| call ({args.device}) | device ops | host syncs | wall ms | host ms until return |")
    print("|---|---|---|---|---|")
    for calls in (projection_calls(args.device), conv_calls(args.device)):
        for name, fn in calls:
            with torch.inference_mode():
                device_ops, syncs, wall, host = profile_call(fn, args.device)
            print(f"| {name} | {device_ops} | {syncs} | {wall:.3f} | {host:.3f} |")
    if args.device == "cpu":
        print_twin_counts()


def print_twin_counts():
    """The CUDA kernel's device operations per call, counted on its CPU twin (op_count.py)."""
    print()
    print("| call (batched algorithm, CPU twin) | device ops | per phase |")
    print("|---|---|---|")
    for name, fn in projection_calls("cpu"):
        if "torch eigh" in name:
            continue  # the twin has no batched eigensolver: the same call as cold
        fn()  # warm-up
        counts = op_count.count_ops(fn)
        phases = ", ".join(f"{phase} {n}" for phase, n in counts.most_common() if phase is not None)
        print(f"| {name} | {counts[None]} | {phases} |")


if __name__ == "__main__":
    main()
