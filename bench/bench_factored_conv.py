"""factored_conv2d (ours) against the unfused torch pair (two F.conv2d) and the dense conv.

Cases: every distinct factored layer of CIFAR ResNet-20/56 (32x32 inputs) and ImageNet
ResNet-18/50 (224x224), as select_layers picks them, at TRP-like ranks (CIFAR: 6, 10, 20 for 16,
32, 64 output channels; ImageNet: n / 4), batch 1 and 32, both schemes. Every variant computes
the whole layer: conv(s), bias (a folded BatchNorm) and ReLU.

    make bench                                  # everything (CPU; CUDA too where a GPU is visible)
    TRP_BENCH_QUICK=1 make bench                # CIFAR shapes, and ImageNet shapes at batch 1 only
    python bench/report.py bench/latest.json    # the ratio tables of RESULTS.md
    python bench/report.py bench/latest.json --fma-peak 230   # and each variant's share of a
                                                # 230 GFLOP/s multiply-add peak (measure yours)

The report's ``pair/ours`` column is the speedup over the unfused pair; ``realisation`` is
(t_dense / t_ours) / (dense FLOPs / factored FLOPs): 1.0 means the whole FLOP saving became
wall-clock time.
"""
import contextlib
import os
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from trp_ext import _reference as ref
from trp_ext import ops
from trp_ext.models import build_model
from trp_ext.selection import select_layers

from conftest import CUDA, measure

QUICK = os.environ.get("TRP_BENCH_QUICK", "").strip() not in ("", "0")
CIFAR_RANKS = {16: 6, 32: 10, 64: 20}
BATCHES = (1, 32)
SCHEMES = ref.SCHEMES
VARIANTS = ("ours", "pair", "dense")
# On CUDA also ours with the first GEMM's loads single-buffered (ops.cuda_pipelined_loads
# "never"): the report's single/ours column is what the cp.async pipeline gains.
CUDA_VARIANTS = VARIANTS + ("single",)


@dataclass(frozen=True)
class Layer:
    family: str  # "cifar" or "imagenet"
    c: int
    n: int
    h: int
    w: int
    kernel: tuple
    stride: tuple
    padding: tuple
    dilation: tuple

    @property
    def rank(self):
        return CIFAR_RANKS.get(self.n, max(1, self.n // 3)) if self.family == "cifar" else self.n // 4

    def out_size(self):
        return tuple((size + 2 * p - d * (k - 1) - 1) // s + 1
                     for size, k, s, p, d in zip((self.h, self.w), self.kernel, self.stride, self.padding, self.dilation))

    def macs(self, scheme):
        """(dense, factored) multiply-adds per image."""
        (kh, kw), (ho, wo), r = self.kernel, self.out_size(), self.rank
        dense = ho * wo * self.n * self.c * kh * kw
        if scheme == "channel":
            factored = ho * wo * (r * self.c * kh * kw + self.n * r)
        else:  # kh x 1 over the full input width, then 1 x kw
            factored = ho * self.w * r * self.c * kh + ho * wo * self.n * r * kw
        return dense, factored


def _selected_layer_inputs(arch, size):
    """(name, module, input shape) of every layer select_layers picks, from a meta-device pass."""
    with torch.device("meta"):
        model = build_model(arch, num_classes=1000 if size == 224 else 10).eval()
    seen = {}

    def record(name):
        def hook(module, args, out):
            seen.setdefault(name, args[0].shape)  # returns None: the output stays as it is
        return hook

    hooks = [module.register_forward_hook(record(name)) for name, module in select_layers(model)]
    with torch.no_grad():
        model(torch.empty(1, 3, size, size, device="meta"))
    for hook in hooks:
        hook.remove()
    return [(name, module, seen[name]) for name, module in select_layers(model)]


def _layers():
    layers = []
    for family, archs, size in (("cifar", ("resnet20", "resnet56"), 32), ("imagenet", ("resnet18", "resnet50"), 224)):
        for arch in archs:
            for _, m, shape in _selected_layer_inputs(arch, size):
                layer = Layer(family, m.in_channels, m.out_channels, shape[2], shape[3], tuple(m.kernel_size),
                              tuple(m.stride), tuple(m.padding), tuple(m.dilation))
                if layer not in layers:
                    layers.append(layer)
    return layers


LAYERS = _layers()


def _cases(batches):
    for layer in LAYERS:
        for batch in batches:
            if QUICK and layer.family == "imagenet" and batch > 1:
                continue
            for scheme in SCHEMES:
                yield pytest.param(layer, batch, scheme, id=f"{scheme}-{_name(layer, batch)}")


def _name(layer, batch):
    stride = "x".join(map(str, layer.stride)) if layer.stride[0] != layer.stride[1] else str(layer.stride[0])
    return f"{layer.c}-{layer.n} {layer.h}x{layer.w} s{stride} r{layer.rank} b{batch}"


def _operands(layer, batch, scheme, device, dtype, channels_last):
    gen = torch.Generator().manual_seed(0)
    kh, kw = layer.kernel
    r = layer.rank
    x = torch.randn(batch, layer.c, layer.h, layer.w, generator=gen)
    w = torch.randn(layer.n, layer.c, kh, kw, generator=gen) / (layer.c * kh * kw) ** 0.5
    w1, w2 = ref.split_conv_weight(w, scheme, r)
    bias = torch.randn(layer.n, generator=gen)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    # A model converted with .to(memory_format=channels_last) converts its conv weights too.
    move = lambda t: t.to(device=device, dtype=dtype).contiguous(memory_format=fmt) if t.dim() == 4 else t.to(device=device, dtype=dtype)  # noqa: E731
    return [move(t) for t in (x, w, w1, w2, bias)]


def _variant_fn(variant, layer, scheme, x, w, w1, w2, bias):
    s, p, d = layer.stride, layer.padding, layer.dilation
    if variant == "ours":
        return lambda: ops.factored_conv2d(x, w1, w2, bias, s, p, d, scheme, "relu")
    if variant == "pair":
        (s1, p1, d1), (s2, p2, d2) = ref.factor_conv_params(scheme, s, p, d)
        return lambda: torch.relu_(F.conv2d(F.conv2d(x, w1, None, s1, p1, d1), w2, bias, s2, p2, d2))
    return lambda: torch.relu_(F.conv2d(x, w, bias, s, p, d))


def _work(layer, scheme, batch, calls=1):
    """ours' extra_info on the arithmetic: the FLOP ratio (for realisation), and the multiply-adds
    of one timed call of `calls` layer calls (for bench/report.py --fma-peak)."""
    dense, factored = layer.macs(scheme)
    return {"flop_ratio": dense / factored, "macs": {"dense": dense * batch * calls, "factored": factored * batch * calls}}


def _rounds(layer, batch):
    """Enough rounds for a stable median, few enough that ImageNet at batch 32 stays quick."""
    ho, wo = layer.out_size()
    dense_macs = batch * ho * wo * layer.n * layer.c * layer.kernel[0] * layer.kernel[1]
    return int(min(40, max(7, 3e9 / dense_macs)))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("layer,batch,scheme", list(_cases(BATCHES)))
def test_cpu(benchmark, layer, batch, scheme, variant):
    benchmark.group = f"{scheme} {_name(layer, batch)}"
    x, w, w1, w2, bias = _operands(layer, batch, scheme, "cpu", torch.float32, channels_last=False)
    fn = _variant_fn(variant, layer, scheme, x, w, w1, w2, bias)
    extra = {}
    if variant == "ours":
        extra = {**_work(layer, scheme, batch),
                 "alternates": {v: _variant_fn(v, layer, scheme, x, w, w1, w2, bias) for v in VARIANTS if v != "ours"}}
    # Three warm-up calls: the first one to three calls of a shape run slower (allocator, caches).
    measure(benchmark, fn, variant, "cpu", rounds=_rounds(layer, batch), warmup_rounds=3, **extra)


CUDA_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CUDA_REPEATS = 20  # launches per timed call, so that the synchronisation does not dominate


@pytest.mark.parametrize("variant", CUDA_VARIANTS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", list(CUDA_DTYPES))
@pytest.mark.parametrize("layer,batch,scheme", list(_cases(BATCHES)))
@pytest.mark.parametrize("device", [CUDA])
def test_cuda(benchmark, device, layer, batch, scheme, dtype, channels_last, variant):
    fmt = "cl" if channels_last else "nchw"
    benchmark.group = f"cuda {dtype} {fmt} {scheme} {_name(layer, batch)}"
    x, w, w1, w2, bias = _operands(layer, batch, scheme, device, CUDA_DTYPES[dtype], channels_last)
    def repeated(name):
        one = _variant_fn("ours" if name == "single" else name, layer, scheme, x, w, w1, w2, bias)
        # The mode is set once a timed call, so that switching it costs nothing per launch.
        mode = (lambda: ops.cuda_pipelined_loads("never")) if name == "single" else contextlib.nullcontext

        def fn():
            with mode():
                for _ in range(CUDA_REPEATS):
                    out = one()
            return out
        return fn

    fn = repeated(variant)
    extra = {}
    if variant == "ours":
        extra = {**_work(layer, scheme, batch, CUDA_REPEATS), "alternates": {v: repeated(v) for v in CUDA_VARIANTS if v != "ours"}}
    measure(benchmark, fn, variant, device, rounds=20, warmup_rounds=3, repeats=CUDA_REPEATS, **extra)
