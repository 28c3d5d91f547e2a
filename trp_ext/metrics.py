"""Cost and quality metrics: MACs/FLOPs/params, theoretical and measured speedup, accuracy.

FLOPs are counted as the paper counts them: multiply-adds of the convolutions (dense or
factored), so that the theoretical speedup is dense conv FLOPs / compressed conv FLOPs over all
convs, the layers left dense included. Linear layers (and other matrix products) are reported
but not in the speedup.
FLOPs = 2 x MACs.
"""
import contextlib
import statistics
import time
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn as nn


@dataclass
class Cost:
    conv_macs: int
    linear_macs: int
    params: int

    @property
    def macs(self):
        return self.conv_macs + self.linear_macs

    @property
    def flops(self):
        return 2 * self.macs

    @property
    def conv_flops(self):
        return 2 * self.conv_macs


@contextlib.contextmanager
def eval_mode(model):
    """``model`` in eval mode, then every module back in its own mode: ``model.train(flag)`` would
    set them all alike, and a BatchNorm frozen for fine-tuning (or an MC-dropout layer left in
    training mode for inference) would come back changed."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def _factored_conv_flops(x_shape, w1_shape, w2_shape, bias, stride, padding, dilation, scheme, activation=None,
                         residual=None, out_shape=None, **kwargs):
    """FLOPs (2 x multiply-adds) of one trp_ext.factored_conv2d call, from its arguments' shapes."""
    batch, c = x_shape[0], x_shape[1]
    r, n = w1_shape[0], w2_shape[0]
    kh, kw1 = w1_shape[2], w1_shape[3]
    out_pixels = out_shape[2] * out_shape[3]
    if scheme == "channel":
        return 2 * batch * out_pixels * (r * c * kh * kw1 + n * r)
    # The kh x 1 stage keeps the input width: its output is (H_out, W_in).
    mid_pixels = out_shape[2] * x_shape[3]
    return 2 * batch * (mid_pixels * r * c * kh + out_pixels * n * r * w2_shape[3])


def _conv_ops():
    aten = torch.ops.aten
    return {aten.convolution, aten._convolution, aten.cudnn_convolution, aten._slow_conv2d_forward,
            aten.convolution_overrideable, torch.ops.trp_ext.factored_conv2d}


@torch.no_grad()
def count_cost(model, example_input):
    """Counts per-sample MACs (one forward of ``example_input``, divided by its batch) and params.

    Counted by operator (torch.utils.flop_counter), not by module: convs called as functions (a
    deployed graph's F.conv2d, a model's own) count as conv modules do. ``linear_macs`` holds
    every other matrix product (linear layers, matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.trp_ext.factored_conv2d: _factored_conv_flops})
    with eval_mode(model), counter:
        model(example_input)
    conv_ops = _conv_ops()
    flops = counter.get_flop_counts()["Global"]
    conv = sum(count for op, count in flops.items() if op in conv_ops)
    other = sum(count for op, count in flops.items() if op not in conv_ops)
    batch = example_input.shape[0]
    params = sum(p.numel() for p in model.parameters())
    return Cost(conv // 2 // batch, other // 2 // batch, params)


def theoretical_speedup(dense_cost, compressed_cost):
    return dense_cost.conv_macs / max(1, compressed_cost.conv_macs)


def deployment_form(model):
    """An eval-mode copy of ``model`` with each conv -> BatchNorm pair folded into the conv, as a
    deployed network runs (where that is exact: trp_ext.batchnorm_folding), each residual add and ReLU that follows a factored
    conv made that conv's epilogue and its calls free of the op's autograd kernel when nothing
    needs a gradient (trp_ext.fusion), and the traced graph's Python overhead trimmed
    (trp_ext.lean_graph: no identity calls, functional convs, flat weight names).
    Compressed models have their factored layers' BN folded by decompose(); folding the dense
    model's too, and trimming its graph alike, keeps a latency comparison fair. A model torch.fx
    cannot trace is returned as an eval-mode copy, unfolded."""
    import copy

    from trp_ext.batchnorm_folding import fold_into_dense_convs
    from trp_ext.fusion import fast_calls, fuse_relu, fuse_residual
    from trp_ext.lean_graph import lean_graph

    model = copy.deepcopy(model).eval()
    try:
        traced = torch.fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 (any tracing failure: fall back to the module as it is)
        return model
    folded = fold_into_dense_convs(traced)
    try:
        fused = fast_calls(fuse_relu(fuse_residual(copy.deepcopy(folded))))
    except Exception:  # noqa: BLE001 (a graph the epilogue passes cannot rewrite: BN folding alone)
        fused = folded
    try:
        return lean_graph(copy.deepcopy(fused))
    except Exception:  # noqa: BLE001 (a graph the trimming cannot rewrite: as it was)
        return fused


@torch.inference_mode()
def compare_latency(dense, compressed, example_input, repeats=20, warmup=3):
    """Median seconds of one forward pass of each model, both in deployment form (see
    deployment_form: BN folded; the compressed model's ReLUs and residual adds after factored
    convs folded into them, the dense model's run as eager torch runs them; both graphs trimmed
    alike), under ``torch.inference_mode()`` as a deployed model runs, timed in alternation so
    that a load change on a shared machine hits both alike."""
    dense, compressed = deployment_form(dense), deployment_form(compressed)
    times = ([], [])
    for _ in range(warmup):
        dense(example_input), compressed(example_input)
    for _ in range(repeats):
        for model, series in zip((dense, compressed), times):
            series.append(measure_latency(model, example_input, repeats=1, warmup=0))
    return statistics.median(times[0]), statistics.median(times[1])


@torch.inference_mode()
def measure_latency(model, example_input, repeats=20, warmup=3):
    """Median wall-clock seconds of one forward pass under ``torch.inference_mode()``
    (synchronised on CUDA), in eval mode; the model's modules keep their own modes afterwards."""
    cuda = example_input.device.type == "cuda"
    times = []
    with eval_mode(model):
        for index in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize(example_input.device)
            start = time.perf_counter()
            model(example_input)
            if cuda:
                torch.cuda.synchronize(example_input.device)
            if index >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def correct_and_total(model, batches, device=None):
    """(correct top-1 predictions, samples) over an iterable of (inputs, labels) batches: labels
    are class indices, one per sample. In eval mode; the model's modules keep their own modes
    afterwards."""
    correct = total = 0
    with eval_mode(model):
        for inputs, labels in batches:
            if device is not None:
                inputs, labels = inputs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            predictions = model(inputs).argmax(dim=1)
            if labels.shape != predictions.shape:
                # (N, 1) or one-hot labels would broadcast against the (N,) predictions: an
                # "accuracy" above 100%, or noise
                raise ValueError(f"argument 'batches': labels of shape {tuple(labels.shape)} for predictions of "
                                 f"shape {tuple(predictions.shape)}; give one class index per sample")
            correct += (predictions == labels).sum().item()
            total += labels.numel()
    return correct, total


def accuracy(model, batches, device=None):
    """Top-1 accuracy in percent over an iterable of (inputs, labels) batches."""
    correct, total = correct_and_total(model, batches, device)
    if total == 0:
        raise ValueError("accuracy(): argument 'batches' yielded no samples")
    return 100.0 * correct / total
