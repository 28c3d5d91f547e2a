"""Runs factored_conv2d on a few fp16 channels_last batch-32 layers, for Nsight Compute to read
its kernels (bench/gpu_check.sh):

    ncu --clock-control none --kernel-name regex:factored_conv2d --launch-count 12 ... \\
        python bench/ncu_layers.py

Two calls per layer (ncu profiles each launch; the first call also absorbs the shared-memory
opt-in), in the order printed. The layers: the two wide ImageNet ones that lost most to the
cuDNN pair on the first H200 run (channel and spatial 512-512 14x14 stride 2, rank 128), and two
that won or came close (CIFAR 16-16 32x32, ImageNet 64-64 56x56); then the two wide ones again
with the single-buffered stage-1 loads (ops.cuda_pipelined_loads("never")), so that the report
compares the kernels with and without the cp.async pipeline. Without a GPU it says so.
"""
import contextlib

import torch

import bench_factored_conv as fconv
from trp_ext import ops

LAYERS = (("channel", 512, 512, 14, (2, 2)), ("spatial", 512, 512, 14, (2, 2)),
          ("channel", 16, 16, 32, (1, 1)), ("channel", 64, 64, 56, (1, 1)))
BATCH = 32
SINGLE_BUFFERED = LAYERS[:2]  # profiled again with the pipeline off


def main():
    if not torch.cuda.is_available():
        print("ncu_layers: no GPU visible; nothing run")
        return
    runs = [(layer, "", contextlib.nullcontext) for layer in LAYERS]
    runs += [(layer, " single", lambda: ops.cuda_pipelined_loads("never")) for layer in SINGLE_BUFFERED]
    for (scheme, c, n, size, stride), suffix, mode in runs:
        layer = next(l for l in fconv.LAYERS if (l.c, l.n, l.h, l.stride, l.kernel) == (c, n, size, stride, (3, 3)))
        operands = fconv._operands(layer, BATCH, scheme, "cuda", torch.float16, channels_last=True)
        call = fconv._variant_fn("ours", layer, scheme, *operands)
        with mode():
            call()
            call()
        torch.cuda.synchronize()
        print(f"{scheme} {fconv._name(layer, BATCH)}{suffix}: 2 calls", flush=True)


if __name__ == "__main__":
    main()
