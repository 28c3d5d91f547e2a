"""ReLU epilogue fusion of deployed compressed models (trp_ext.fusion via metrics.deployment_form)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.experimental.optimization import fuse

from trp_ext import decompose
from trp_ext.fusion import FACTORED_CONV_FUNCTIONS, _is_relu, fuse_relu
from trp_ext.metrics import deployment_form
from trp_ext.models import build_model
from trp_ext.nn import FactoredConv2d


def _fused_convs(module):
    return sum(1 for node in module.graph.nodes
               if node.op == "call_function" and node.target in FACTORED_CONV_FUNCTIONS
               and (node.args[8] if len(node.args) > 8 else node.kwargs.get("activation")) == "relu")


def _relus(module):
    return sum(1 for node in module.graph.nodes if _is_relu(module, node))


@pytest.mark.parametrize("arch,blocks,size", [("resnet20", 9, 32), ("resnet18", 8, 64)])
def test_block_relus_fold_into_the_first_conv_and_outputs_are_unchanged(arch, blocks, size):
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
    # Every block's first conv takes its ReLU; the ReLUs after the residual adds stay.
    assert _fused_convs(deployed) == blocks
    assert _relus(deployed) == relus_before - blocks
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


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
        return F.relu(self.other(x)) + y  # "already_relu": the op's relu stays, F.relu too


@pytest.mark.parametrize("kind,fused", [("method", 1), ("module_through_identity", 1), ("two_users", 0),
                                        ("after_add", 0), ("already_relu", 1)])
def test_only_relus_that_only_a_factored_conv_feeds_are_folded(kind, fused):
    torch.manual_seed(0)
    block = _Block(kind).eval()
    traced = fx.symbolic_trace(block)
    x = torch.randn(2, 4, 7, 5)
    with torch.no_grad():
        expected = block(x)
        relus = _relus(traced)
        fuse_relu(traced)
        got = traced(x)
    assert _fused_convs(traced) == fused  # "already_relu" counts the conv built with relu
    assert _relus(traced) == relus - (fused if kind != "already_relu" else 0)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_a_failing_relu_pass_keeps_the_batchnorm_folding(monkeypatch):
    import trp_ext.fusion

    def broken(module):
        raise RuntimeError("cannot rewrite")

    model = build_model("resnet20", num_classes=10).eval()
    compressed, _ = decompose(model, "channel", energy=0.9)
    assert _fused_convs(deployment_form(compressed)) == 9  # the pass runs when it can
    monkeypatch.setattr(trp_ext.fusion, "fuse_relu", broken)
    deployed = deployment_form(compressed)
    assert isinstance(deployed, fx.GraphModule) and _fused_convs(deployed) == 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())
