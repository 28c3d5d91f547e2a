"""Cost and quality metrics: MACs/FLOPs/params, theoretical and measured speedup, accuracy.

FLOPs are counted as the paper counts them: multiply-adds of the convolutions (dense or
factored), so that the theoretical speedup is dense conv FLOPs / compressed conv FLOPs over all
convs, the layers left dense included. Linear layers are reported but not in the speedup.
FLOPs = 2 x MACs.
"""
import statistics
import time
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn as nn

from trp_ext.nn import FactoredConv2d


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


def _conv_macs(module, inputs, output):
    batch = output.shape[0]
    if isinstance(module, FactoredConv2d):
        x = inputs[0]
        r, c, n = module.rank, module.in_channels, module.out_channels
        kh, kw = module.kernel_size
        out_pixels = output.shape[2] * output.shape[3]
        if module.scheme == "channel":
            return batch * out_pixels * (r * c * kh * kw + n * r)
        # The kh x 1 stage keeps the input width: its output is (H_out, W_in + 0 padding).
        mid_pixels = output.shape[2] * x.shape[3]
        return batch * (mid_pixels * r * c * kh + out_pixels * n * r * kw)
    per_pixel = module.out_channels * (module.in_channels // module.groups)
    per_pixel *= module.kernel_size[0] * module.kernel_size[1]
    return output.numel() // module.out_channels * per_pixel


@torch.no_grad()
def count_cost(model, example_input):
    """Counts per-sample MACs (one forward of ``example_input``, divided by its batch) and params."""
    totals = {"conv": 0, "linear": 0}
    handles = []

    def conv_hook(module, inputs, output):
        totals["conv"] += _conv_macs(module, inputs, output)

    def linear_hook(module, inputs, output):
        totals["linear"] += output.numel() // module.out_features * module.in_features * module.out_features

    for module in model.modules():
        if isinstance(module, (nn.Conv2d, FactoredConv2d)):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        model(example_input)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    batch = example_input.shape[0]
    params = sum(p.numel() for p in model.parameters())
    return Cost(totals["conv"] // batch, totals["linear"] // batch, params)


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
    (synchronised on CUDA)."""
    model.eval()
    cuda = example_input.device.type == "cuda"
    times = []
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
    """(correct top-1 predictions, samples) over an iterable of (inputs, labels) batches."""
    model.eval()
    correct = total = 0
    for inputs, labels in batches:
        if device is not None:
            inputs, labels = inputs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        correct += (model(inputs).argmax(dim=1) == labels).sum().item()
        total += labels.numel()
    return correct, total


def accuracy(model, batches, device=None):
    """Top-1 accuracy in percent over an iterable of (inputs, labels) batches."""
    correct, total = correct_and_total(model, batches, device)
    if total == 0:
        raise ValueError("accuracy(): argument 'batches' yielded no samples")
    return 100.0 * correct / total
