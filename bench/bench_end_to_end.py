"""Compressed vs dense networks end to end: ResNet-56 (CIFAR, 32x32) and ResNet-50 (ImageNet, 224x224).

Every selected conv is given a TRP-like rank (n/3 for CIFAR: 6, 10, 20 for 16, 32, 64 channels;
n/4 for ImageNet), then decompose() factors it (channel scheme, BN folded). Variants per case:
"dense" (the original net), "ours" (the compressed net on the fused factored_conv2d op), and
"pair" (the same compressed net with each factored conv run as two F.conv2d calls).
Every variant has its remaining conv -> BatchNorm pairs folded and its traced graph's Python
overhead trimmed (metrics.deployment_form, trp_ext.lean_graph), as a deployed dense net would, so
the dense baseline pays no BatchNorm pass or module-call overhead that ours skips.
flop_ratio = dense conv FLOPs / compressed conv FLOPs, so the report's realisation is
(t_dense / t_ours) / flop_ratio; the target is at least 0.8.
"""
import contextlib
import functools

import pytest
import torch

from trp_ext import _reference, decompose, ops
from trp_ext.lowrank import conv_weight_to_matrix, matrix_to_conv_weight
from trp_ext.metrics import count_cost, deployment_form, theoretical_speedup
from trp_ext.models import resnet50, resnet56
from trp_ext.selection import select_layers

from conftest import measure


def _case(arch, batch, device, dtype, channels_last):
    """One parameter set, marked cuda (skipped without a GPU, selected by -m cuda) on CUDA: a
    pytest.param inside a tuple is not one, and reached the test as its device argument."""
    marks = [pytest.mark.cuda] if device == "cuda" else []
    name = f"{arch}-b{batch}-{device}-{str(dtype).split('.')[-1]}-{'cl' if channels_last else 'nchw'}"
    return pytest.param(arch, batch, device, dtype, channels_last, marks=marks, id=name)


CASES = [  # (arch, batch, device, dtype, channels_last)
    _case("resnet56", 1, "cpu", torch.float32, False),
    _case("resnet56", 64, "cpu", torch.float32, False),
    _case("resnet50", 1, "cpu", torch.float32, False),
    _case("resnet56", 1, "cuda", torch.float16, True),
    _case("resnet56", 64, "cuda", torch.float16, True),
    _case("resnet56", 64, "cuda", torch.float32, False),
    _case("resnet50", 1, "cuda", torch.float16, True),
    _case("resnet50", 32, "cuda", torch.float16, True),
    _case("resnet50", 32, "cuda", torch.float32, False),
]
_MODELS = {}


def _trp_like(arch):
    """Dense model whose selected conv weights have TRP-like ranks, and its decomposition."""
    if arch not in _MODELS:
        torch.manual_seed(0)
        model = (resnet56() if arch == "resnet56" else resnet50()).eval()
        divisor = 3 if arch == "resnet56" else 4
        with torch.no_grad():
            for _, conv in select_layers(model):
                matrix = conv_weight_to_matrix(conv.weight, "channel").double()
                u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
                rank = max(1, round(conv.out_channels / divisor))
                rank = 6 if conv.out_channels == 16 and arch == "resnet56" else rank
                low = (u[:, :rank] * s[:rank]) @ vh[:rank]
                conv.weight.copy_(matrix_to_conv_weight(low.float(), "channel", conv.weight.shape))
        compressed, _ = decompose(model, "channel", value_threshold=1e-4, fold_bn=True)
        _MODELS[arch] = (model, compressed.eval())
    return _MODELS[arch]


@contextlib.contextmanager
def unfused_pair():
    """Runs FactoredConv2d through the reference's two F.conv2d calls."""
    fused = ops.factored_conv2d
    ops.factored_conv2d = _reference.factored_conv2d
    try:
        yield
    finally:
        ops.factored_conv2d = fused


def _prepare(model, device, dtype, channels_last, example):
    model = deployment_form(model).to(device=device, dtype=dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        example = example.contiguous(memory_format=torch.channels_last)
    return model, example


VARIANTS = ("dense", "ours", "pair")


def _variant_call(variant, dense, compressed, device, dtype, channels_last, example):
    """The variant's deployed model applied to the example, as a no-argument callable."""
    context = unfused_pair() if variant == "pair" else contextlib.nullcontext()
    with context:  # torch.fx records the factored conv's function when it traces: patch first
        model, x = _prepare(dense if variant == "dense" else compressed, device, dtype, channels_last,
                            example.to(device=device, dtype=dtype))
    return lambda: model(x)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("arch,batch,device,dtype,channels_last", CASES)
def test_end_to_end(benchmark, arch, batch, device, dtype, channels_last, variant):
    dense, compressed = _trp_like(arch)
    size = 32 if arch == "resnet56" else 224
    example = torch.randn(batch, 3, size, size)
    flop_ratio = theoretical_speedup(count_cost(dense, example[:1]), count_cost(compressed, example[:1]))
    call = functools.partial(_variant_call, dense=dense, compressed=compressed, device=device, dtype=dtype,
                             channels_last=channels_last, example=example)
    extra = {}
    if variant == "ours":
        extra = {"flop_ratio": flop_ratio, "alternates": {v: call(v) for v in VARIANTS if v != "ours"}}
    fmt = "channels_last" if channels_last else "NCHW"
    benchmark.group = f"{arch} b{batch} {device} {str(dtype).split('.')[-1]} {fmt}"
    heavy = arch == "resnet50" and device == "cpu"
    rounds = 5 if heavy else 20
    # Ten warm-up calls: a whole net allocates its activations afresh each call, and glibc serves
    # large blocks by mmap (fresh, faulting pages) until its threshold has adapted to them. The
    # dense ResNet-56 at batch 64 took ~330 ms a call for its first ~12 calls in a process and
    # ~200 ms after (~190 ms from the first with MALLOC_MMAP_THRESHOLD_ set high); two warm-up
    # calls left most of that in its median.
    with torch.inference_mode():
        measure(benchmark, call(variant), variant, device=device, rounds=rounds, warmup_rounds=10, **extra)
