"""trp_ext.lean_graph: the Python overhead trimmed from a deployed (traced) model, outputs unchanged."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.experimental.optimization import fuse

import trp_ext.lean_graph
from trp_ext import decompose
from trp_ext.fusion import fuse_relu, fuse_residual
from trp_ext.lean_graph import lean_graph
from trp_ext.metrics import deployment_form
from trp_ext.models import build_model


def _module_calls(module, kind):
    return [node for node in module.graph.nodes
            if node.op == "call_module" and type(module.get_submodule(node.target)) is kind]


def _trained_like(arch):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10).eval()
    for module in model.modules():  # BatchNorms that do something, so that folding is exercised
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("compressed", [False, True])
def test_a_deployed_resnet_is_trimmed_and_its_outputs_are_bit_identical(compressed):
    model = _trained_like("resnet20")
    if compressed:
        model, _ = decompose(model, "channel", energy=0.9)
    graph = fuse(copy.deepcopy(model))
    if compressed:
        graph = fuse_relu(fuse_residual(graph))
    assert _module_calls(graph, nn.Identity) and (compressed or _module_calls(graph, nn.Conv2d))
    lean = lean_graph(copy.deepcopy(graph))
    for kind in (nn.Identity, nn.Conv2d, nn.Linear):
        assert not _module_calls(lean, kind)
    get_attrs = [node.target for node in lean.graph.nodes if node.op == "get_attr"]
    assert get_attrs and all("." not in target for target in get_attrs)
    assert not list(lean.children())  # every submodule was only reached through the rewritten nodes
    assert sum(p.numel() for p in lean.parameters()) == sum(p.numel() for p in graph.parameters())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(lean(x), graph(x))


def test_deployment_form_runs_the_trimming():
    compressed, _ = decompose(_trained_like("resnet20"), "channel", energy=0.9)
    deployed = deployment_form(compressed)
    assert not _module_calls(deployed, nn.Identity)
    assert all("." not in node.target for node in deployed.graph.nodes if node.op == "get_attr")


def test_a_failing_trimming_keeps_the_fused_graph(monkeypatch):
    compressed, _ = decompose(_trained_like("resnet20"), "channel", energy=0.9)

    def broken(module):
        raise RuntimeError("cannot rewrite")

    monkeypatch.setattr(trp_ext.lean_graph, "lean_graph", broken)
    deployed = deployment_form(compressed)
    assert isinstance(deployed, fx.GraphModule) and _module_calls(deployed, nn.Identity)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), compressed.eval()(x), rtol=1e-4, atol=1e-4)


class _Subclass(nn.Conv2d):
    """A subclass: its forward may differ from nn.Conv2d's, so it must stay a module call."""


class _SubclassAsLeaf(fx.Tracer):
    """Keeps _Subclass a module call, as torch.fx keeps torch.nn's own modules."""

    def is_leaf_module(self, module, qualified_name):
        return isinstance(module, _Subclass) or super().is_leaf_module(module, qualified_name)


class _Mixed(nn.Module):
    def __init__(self, hook_calls):
        super().__init__()
        self.hooked = nn.Conv2d(3, 4, 3, padding=1)
        self.subclass = _Subclass(4, 4, 1)
        self.reflect = nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")
        self.plain = nn.Conv2d(4, 4, 3, padding="same", dilation=2, groups=2, bias=False)
        self.hooked_identity = nn.Identity()
        self.head = nn.Linear(4, 5)
        # Plain functions (copied by reference when the graph is deep-copied) into one list.
        self.hooked.register_forward_hook(lambda module, inputs, output: hook_calls.append("conv"))
        self.hooked_identity.register_forward_pre_hook(lambda module, args: hook_calls.append("identity"))

    def forward(self, x):
        y = self.plain(self.reflect(self.subclass(self.hooked(x))))
        return self.head(self.hooked_identity(y).mean((2, 3)))


def test_modules_with_hooks_other_padding_or_own_types_keep_their_calls():
    torch.manual_seed(0)
    hook_calls = []
    model = _Mixed(hook_calls).eval()
    traced = fx.GraphModule(model, _SubclassAsLeaf().trace(model))
    lean = lean_graph(copy.deepcopy(traced))
    kept = {node.target for node in lean.graph.nodes if node.op == "call_module"}
    assert kept == {"hooked", "subclass", "reflect", "hooked_identity"}
    functions = [node.target for node in lean.graph.nodes if node.op == "call_function"]
    assert F.conv2d in functions and F.linear in functions  # `plain` and `head`
    x = torch.randn(2, 3, 9, 7)
    with torch.no_grad():
        expected = traced(x)
        hook_calls.clear()
        assert torch.equal(lean(x), expected)
    assert sorted(hook_calls) == ["conv", "identity"]  # the hooks still run


class _Tied(nn.Module):
    """One parameter reached through two paths, a buffer read in forward (so traced as get_attr),
    and a top-level attribute already named as a flattened path would be."""

    def __init__(self):
        super().__init__()
        self.a = nn.Module()
        self.a.weight = nn.Parameter(torch.randn(4, 4))
        self.b = nn.Module()
        self.b.weight = self.a.weight
        self.a.register_buffer("scale", torch.full((4,), 2.0), persistent=False)
        self.a_weight = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        return x @ self.a.weight * self.a.scale + x @ self.b.weight + x @ self.a_weight


def test_flat_names_are_one_per_tensor_unique_and_keep_registration():
    torch.manual_seed(0)
    traced = fx.symbolic_trace(_Tied())
    lean = lean_graph(copy.deepcopy(traced))
    names = {node.target for node in lean.graph.nodes if node.op == "get_attr"}
    assert len(names) == 3 and "a_weight" in names  # the tied weight once, under a new name
    assert len(list(lean.parameters())) == 2
    # The buffer keeps the registration the traced module gave it: non-persistent under torch
    # 2.14, whose fx tracing keeps the flag; torch 2.11's tracing itself made it persistent.
    assert ("a_scale" in lean.state_dict()) == ("a.scale" in traced.state_dict())
    assert isinstance(lean.a_scale, torch.Tensor)
    x = torch.randn(3, 4)
    assert torch.equal(lean(x), traced(x))
    lean = lean.to(torch.float64)  # registered, so conversions reach them
    assert all(p.dtype == torch.float64 for p in lean.parameters()) and lean.a_scale.dtype == torch.float64
    torch.testing.assert_close(lean(x.double()), traced.double()(x.double()))
