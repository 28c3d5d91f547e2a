"""Epilogue fusion of deployed compressed models (trp_ext.fusion via metrics.deployment_form):
ReLUs after factored convs, and residual adds (with the ReLU after them)."""
import copy
import operator

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.experimental.optimization import fuse

from trp_ext import decompose
from trp_ext.fusion import (FACTORED_CONV_FUNCTIONS, RAW_OP, _is_relu, factored_conv2d_residual, fuse_relu,
                            fuse_residual)
from trp_ext.ops.factored_conv2d import factored_conv2d_normalised
from trp_ext.metrics import deployment_form
from trp_ext.models import build_model
from trp_ext.nn import FactoredConv2d


def _fused_convs(module):
    return sum(1 for node in module.graph.nodes
               if node.op == "call_function" and node.target in FACTORED_CONV_FUNCTIONS
               and (node.args[8] if len(node.args) > 8 else node.kwargs.get("activation")) == "relu")


def _relus(module):
    return sum(1 for node in module.graph.nodes if _is_relu(module, node))


def _residual_convs(module, activation="relu"):
    return sum(1 for node in module.graph.nodes
               if node.op == "call_function" and node.target is factored_conv2d_residual and node.args[8] == activation)


@pytest.mark.parametrize("arch,blocks,size", [("resnet20", 9, 32), ("resnet18", 8, 64)])
def test_block_epilogues_fold_into_the_convs_and_outputs_are_unchanged(arch, blocks, size):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10).eval()
    for module in model.modules():  # BatchNorms that do something, so folding is exercised
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    compressed, _ = decompose(model, "channel", energy=0.9)
    folded = fuse(copy.deepcopy(compressed).eval())
    relus_before = _relus(folded)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = folded(x)
        deployed = deployment_form(compressed)
        got = deployed(x)
    # Every block's first conv takes its ReLU, its second the residual add and the ReLU after it.
    assert _fused_convs(deployed) == blocks
    assert _residual_convs(deployed) == blocks
    assert _relus(deployed) == relus_before - 2 * blocks
    assert not any(node.target in (operator.add, operator.iadd) for node in deployed.graph.nodes)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def _fused_and_outputs(block, fusion):
    """The traced block after `fusion`, and the outputs of the block and of the fused graph."""
    block.eval()
    traced = fx.symbolic_trace(block)
    x = torch.randn(2, 4, 7, 5)
    with torch.no_grad():
        expected = block(x)
        fusion(traced)
        got = traced(x)
    return traced, expected, got


class _Block(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.conv = FactoredConv2d(4, 6, 2, 3, padding=1)
        self.other = FactoredConv2d(4, 6, 2, 3, padding=1, activation="relu")
        self.identity = nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.conv(x)
        if self.kind == "method":
            return y.relu()
        if self.kind == "module_through_identity":
            return self.relu(self.identity(y))
        if self.kind == "two_users":
            return F.relu(y) + y
        if self.kind == "after_add":
            return F.relu(y + 1.0)
        if self.kind == "residual_in_the_op":  # relu(conv(x) + x[:, :1]): the op applies it last
            return F.relu(self.conv(x, residual=x[:, :1]))
        return F.relu(self.other(x)) + y  # "already_relu": the op's relu stays, F.relu too


@pytest.mark.parametrize("kind,fused", [("method", 1), ("module_through_identity", 1), ("two_users", 0),
                                        ("after_add", 0), ("already_relu", 1), ("residual_in_the_op", 1)])
def test_only_relus_that_only_a_factored_conv_feeds_are_folded(kind, fused):
    torch.manual_seed(0)
    block = _Block(kind)
    relus = _relus(fx.symbolic_trace(block))
    traced, expected, got = _fused_and_outputs(block, fuse_relu)
    assert _fused_convs(traced) == fused  # "already_relu" counts the conv built with relu
    assert _relus(traced) == relus - (fused if kind != "already_relu" else 0)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["fuse_relu", "fuse_residual"])
def test_a_failing_epilogue_pass_keeps_the_batchnorm_folding(monkeypatch, name):
    import trp_ext.fusion

    def broken(module):
        raise RuntimeError("cannot rewrite")

    model = build_model("resnet20", num_classes=10).eval()
    compressed, _ = decompose(model, "channel", energy=0.9)
    deployed = deployment_form(compressed)
    assert _fused_convs(deployed) == 9 and _residual_convs(deployed) == 9  # the passes run when they can
    monkeypatch.setattr(trp_ext.fusion, name, broken)
    deployed = deployment_form(compressed)
    assert isinstance(deployed, fx.GraphModule) and _fused_convs(deployed) == _residual_convs(deployed) == 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())


class _ResidualBlock(nn.Module):
    """A factored conv whose output meets another tensor in a sum, written in several ways."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.conv = FactoredConv2d(4, 6, 2, 3, padding=1)
        self.shortcut = FactoredConv2d(4, 6, 2, 1)
        self.identity = nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        y, s = self.conv(x), self.shortcut(x)
        kind = self.kind
        if kind == "add_relu":
            return F.relu(y + s)
        if kind == "reversed_through_identity":
            return self.relu(s + self.identity(y))
        if kind == "iadd":
            y += s
            return y.relu()
        if kind == "torch_add_no_relu":
            return torch.add(y, s)
        if kind == "method_add":
            return y.add(s).relu()
        if kind == "add_two_users":  # the sum is used twice: the ReLU stays outside
            z = y + s
            return F.relu(z) * z
        if kind == "conv_two_users":
            return F.relu(y + s) + y
        if kind == "alpha":
            return F.relu(torch.add(y, s, alpha=2.0))
        if kind == "scalar":
            return F.relu(y + 1.0)
        if kind == "broadcast_up":  # the sum broadcasts the conv output up: runs unfused
            return F.relu(y + torch.stack([s, s]))
        if kind == "other_dtype":  # the sum promotes to float64: runs unfused
            return F.relu(y + s.double())
        # In-place sums (tracing records `y += s` as a plain add: Tensor.add_ stays in place)
        if kind == "add_inplace":  # into the conv's output, which nothing else reads
            return y.add_(s).relu()
        if kind == "add_inplace_other_dtype":  # the float64 residual is added into the float32 output
            return y.add_(s.double()).relu()
        if kind == "add_inplace_broadcast_up":  # a residual larger than the output raises
            return y.add_(torch.stack([s, s])).relu()
        if kind == "add_inplace_into_other":  # into another tensor, which is read again: stays unfused
            t = s * 1.0
            t.add_(y)
            return F.relu(t)
        raise ValueError(kind)


@pytest.mark.parametrize("kind,fused,activation", [
    ("add_relu", 1, "relu"), ("reversed_through_identity", 1, "relu"), ("iadd", 1, "relu"),
    ("torch_add_no_relu", 1, None), ("method_add", 1, "relu"), ("add_two_users", 1, None),
    ("conv_two_users", 0, None), ("alpha", 0, None), ("scalar", 0, None), ("broadcast_up", 1, "relu"),
    ("other_dtype", 1, "relu"), ("add_inplace", 1, "relu"), ("add_inplace_other_dtype", 1, "relu"),
    ("add_inplace_into_other", 0, None),
])
def test_residual_adds_fold_into_the_conv(kind, fused, activation):
    torch.manual_seed(0)
    traced, expected, got = _fused_and_outputs(_ResidualBlock(kind), fuse_residual)
    assert _residual_convs(traced, activation) == fused
    assert got.shape == expected.shape and got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_an_inplace_sum_the_conv_output_cannot_hold_still_raises():
    torch.manual_seed(0)
    block = _ResidualBlock("add_inplace_broadcast_up").eval()
    traced = fuse_residual(fx.symbolic_trace(block))
    assert _residual_convs(traced) == 1
    x = torch.randn(2, 4, 7, 5)
    for model in (block, traced):
        with torch.no_grad(), pytest.raises(RuntimeError, match="doesn't match the broadcast shape"):
            model(x)


def test_fused_residual_block_trains():
    """The fused call is differentiable in every input, the residual included."""
    torch.manual_seed(0)
    block = _ResidualBlock("add_relu")
    traced = fuse_residual(fx.symbolic_trace(copy.deepcopy(block)))
    x = torch.randn(2, 4, 7, 5, requires_grad=True)
    block(x).square().sum().backward()
    expected = [x.grad.clone()] + [p.grad.clone() for p in block.parameters()]
    x.grad = None
    traced(x).square().sum().backward()
    got = [x.grad] + [p.grad for p in traced.parameters()]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("residual_kind", ["fusable", "other_dtype", "broadcast_up"])
def test_the_residual_helper_makes_one_op_call_for_a_sum_the_op_computes(monkeypatch, residual_kind):
    import trp_ext.fusion

    torch.manual_seed(0)
    x, w1, w2, bias = torch.randn(2, 4, 7, 5), torch.randn(2, 4, 3, 3), torch.randn(6, 2, 1, 1), torch.randn(6)
    residual = {"fusable": torch.randn(6, 1, 1), "other_dtype": torch.randn(2, 6, 7, 5, dtype=torch.float64),
                "broadcast_up": torch.randn(3, 2, 6, 7, 5)}[residual_kind]
    calls = []
    real = trp_ext.fusion.RAW_OP

    def counting(*args):
        calls.append(args[9] is not None if len(args) > 9 else False)
        return real(*args)

    monkeypatch.setattr(trp_ext.fusion, "OP_CALL", counting)
    got = factored_conv2d_residual(x, w1, w2, bias, (1, 1), (1, 1), (1, 1), "channel", "relu", residual)
    expected = torch.relu(real(x, w1, w2, bias, (1, 1), (1, 1), (1, 1), "channel", None) + residual)
    # A sum the op cannot compute: its one failed attempt, then the separate ops.
    assert calls == ([True] if residual_kind == "fusable" else [True, False])
    assert got.shape == expected.shape and got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["grad", "no_grad", "inference"])
def test_deployed_graphs_call_the_op_without_its_autograd_kernel_only_when_nothing_needs_grad(mode):
    torch.manual_seed(0)
    compressed, _ = decompose(build_model("resnet20", num_classes=10).eval(), "channel", energy=0.9)
    deployed = deployment_form(compressed)
    targets = [node.target for node in deployed.graph.nodes if node.op == "call_function"]
    assert RAW_OP not in targets and factored_conv2d_normalised in targets
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        expected = compressed.eval()(x)
    context = {"grad": torch.enable_grad(), "no_grad": torch.no_grad(), "inference": torch.inference_mode()}[mode]
    with context:
        got = deployed(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got.requires_grad == (mode == "grad")  # the weights are parameters: with grad on, it trains
    if mode == "grad":
        got.square().sum().backward()
        # (torch.fx's BN folding gives a conv without a bias one that does not require grad)
        trained = [p for p in deployed.parameters() if p.requires_grad]
        assert len(trained) > 40 and all(p.grad is not None for p in trained)
