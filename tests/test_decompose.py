"""decompose(): factored model equals the projected dense model; BN folding; break-even; baselines."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from trp_ext import TRP, FactoredConv2d, decompose
from trp_ext.models import resnet20


def _randomize_batchnorms(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def _projected_model(scheme, energy=0.8):
    torch.manual_seed(0)
    model = resnet20(shortcut="B")
    _randomize_batchnorms(model)
    TRP(model, scheme=scheme, energy=energy, period=1, lam=0.0).step()
    return model.eval()


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("fold_bn", [False, True])
def test_decomposed_matches_projected_dense_model(scheme, fold_bn):
    model = _projected_model(scheme, energy=0.5)  # low enough that stride-2 layers pay off too
    # Re-applying the energy rule to an already projected weight would cut further (80% of 80%):
    # a TRP-trained model is decomposed with a small value threshold, as the published code does.
    compressed, report = decompose(model, scheme, value_threshold=1e-3, fold_bn=fold_bn)
    compressed.eval()
    factored = [m for m in compressed.modules() if isinstance(m, FactoredConv2d)]
    assert len(factored) == len(report.factored) > 0
    assert any(m.stride == (2, 2) for m in factored)  # stride-2 convs are decomposed too
    assert all(d.bn_folded == fold_bn for d in report.factored)
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(compressed(x), model(x), rtol=1e-3, atol=1e-4)


def test_input_model_is_untouched_unless_inplace():
    model = _projected_model("channel")
    decompose(model, "channel", value_threshold=1e-3)
    assert not any(isinstance(m, FactoredConv2d) for m in model.modules())
    same, _ = decompose(model, "channel", value_threshold=1e-3, inplace=True)
    assert same is model and any(isinstance(m, FactoredConv2d) for m in model.modules())


def test_layer_past_break_even_stays_dense():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 64, 3, padding=1))
    compressed, report = decompose(model, "channel", energy=1.0, fold_bn=False)
    dense = {d.name: d for d in report.kept_dense}
    # layer "1": rank 8 of a random 8 x 72 matrix: 8*(72+8) = 640 >= 8*72 = 576 -> dense.
    assert "1" in dense and "break-even" in dense["1"].reason
    assert isinstance(compressed[1], nn.Conv2d)
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(compressed(x), model(x), rtol=1e-4, atol=1e-5)


def test_baseline_without_trp_is_decomposed_post_training():
    torch.manual_seed(0)
    model = resnet20().eval()
    compressed, report = decompose(model, "spatial", energy=0.6)
    assert report.factored and report.mean_rank() < 48
    assert compressed(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_value_threshold_recovers_trp_ranks_and_energy_cuts_further():
    torch.manual_seed(0)
    model = resnet20().eval()
    trp = TRP(model, energy=0.7, period=1, lam=0.0)
    trp.step()
    _, by_value = decompose(model, "channel", value_threshold=1e-3)
    _, by_energy = decompose(model, "channel", energy=0.7)
    assert [d.rank for d in by_value.layers] == trp.history[-1]["ranks"]
    assert all(e.rank <= v.rank for e, v in zip(by_energy.layers, by_value.layers))
    assert sum(e.rank for e in by_energy.layers) < sum(v.rank for v in by_value.layers)


def test_decompose_bad_arguments():
    model = resnet20()
    with pytest.raises(ValueError, match="rank rule"):
        decompose(model, "channel")
    with pytest.raises(ValueError, match="argument 'energy'"):
        decompose(model, "channel", energy=1.2)
    with pytest.raises(ValueError, match="argument 'scheme'"):
        decompose(model, "diagonal", energy=0.9)
    with pytest.raises(ValueError, match="no eligible conv layers"):
        decompose(nn.Sequential(nn.Conv2d(3, 4, 3)), "channel", energy=0.9)


def test_from_conv_keeps_geometry_and_bias():
    conv = nn.Conv2d(6, 10, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2), bias=True)
    for scheme, full in (("channel", 10), ("spatial", 18)):  # 10 x 90 and 18 x 50 matrices
        module = FactoredConv2d.from_conv(conv, rank=full, scheme=scheme)
        x = torch.randn(2, 6, 11, 13)
        torch.testing.assert_close(module(x), conv(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="argument 'rank'"):
        FactoredConv2d.from_conv(conv, rank=11, scheme="channel")


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_from_conv_refuses_a_padding_mode_the_op_does_not_compute(padding_mode):
    conv = nn.Conv2d(8, 8, 3, padding=1, padding_mode=padding_mode)
    with pytest.raises(ValueError, match=f"padding_mode='{padding_mode}'"):
        FactoredConv2d.from_conv(conv, rank=8)


def test_from_conv_refuses_grouped_and_string_padded_convs():
    with pytest.raises(ValueError, match="groups=2"):
        FactoredConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=2), rank=2)
    with pytest.raises(ValueError, match="padding='same'"):
        FactoredConv2d.from_conv(nn.Conv2d(4, 4, 3, padding="same"), rank=2)
    with pytest.raises(ValueError, match="argument 'conv'"):
        FactoredConv2d.from_conv(nn.Linear(4, 4), rank=2)


@pytest.mark.parametrize("argument,value", [("rank", 2.9), ("rank", "3"), ("rank", True), ("rank", 0),
                                            ("in_channels", -1), ("out_channels", 4.0), ("kernel_size", -1),
                                            ("kernel_size", (3, 3, 3)), ("stride", 0), ("padding", (1, -1)),
                                            ("dilation", 0)])
def test_factored_conv_checks_its_sizes_when_built(argument, value):
    # int() took rank 2.9 as 2 and "3" as 3; negative or 3-element sizes failed inside torch
    kwargs = {"in_channels": 4, "out_channels": 4, "rank": 2, "kernel_size": 3, argument: value}
    with pytest.raises(ValueError, match=f"argument '{argument}'"):
        FactoredConv2d(**kwargs)
    if argument == "rank":
        with pytest.raises(ValueError, match="argument 'rank'"):
            FactoredConv2d.from_conv(nn.Conv2d(4, 4, 3), rank=value)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_factored_conv_refuses_string_padding_when_built(padding):
    with pytest.raises(ValueError, match="argument 'padding'"):
        FactoredConv2d(4, 4, 2, 3, padding=padding)


def _batchnorm_statistics(bn):
    bn.running_mean.fill_(0.3)
    bn.running_var.fill_(2.0)
    return bn


def test_batchnorm_without_running_statistics_is_left_in_place():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8, track_running_stats=False))
    folded, report = decompose(model.eval(), "channel", energy=0.5)
    unfolded, _ = decompose(model, "channel", energy=0.5, fold_bn=False)
    assert report.factored and not any(d.bn_folded for d in report.layers)
    assert isinstance(folded[2], nn.BatchNorm2d)
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(folded(x), unfolded(x), rtol=0, atol=0)


class _SharedConv(nn.Module):
    """One conv called twice (weight tying), a BN after only its first call."""

    def __init__(self):
        super().__init__()
        self.c0, self.c, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)

    def forward(self, x):
        y = self.c0(x)
        return self.bn(self.c(y)) + self.c(y * 2)


class _SharedBatchNorm(nn.Module):
    """One BN after two convs."""

    def __init__(self):
        super().__init__()
        self.c0, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.a, self.b = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x):
        y = self.c0(x)
        return self.bn(self.a(y)) + self.bn(self.b(y))


@pytest.mark.parametrize("block", [_SharedConv, _SharedBatchNorm])
def test_a_module_called_twice_keeps_its_batchnorm(block):
    torch.manual_seed(0)
    model = block().eval()
    _batchnorm_statistics(model.bn)
    folded, report = decompose(model, "channel", energy=0.6)
    unfolded, _ = decompose(model, "channel", energy=0.6, fold_bn=False)
    assert report.factored and not any(d.bn_folded for d in report.layers)
    assert isinstance(folded.bn, nn.BatchNorm2d)
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(folded(x), unfolded(x), rtol=0, atol=0)


def test_a_conv_overriding_conv_forward_stays_dense():
    # Weight standardisation in _conv_forward: the raw weight is not what the conv applies, so
    # factoring it (or folding a BN into it) changed the output.
    class Standardised(nn.Conv2d):
        def _conv_forward(self, x, weight, bias):
            return super()._conv_forward(x, weight / weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1), bias)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), Standardised(16, 16, 3), nn.BatchNorm2d(16)).eval()
    _batchnorm_statistics(model[2])
    compressed, report = decompose(model, "channel", energy=0.5)
    (decision,) = [d for d in report.layers if d.name == "1"]
    assert not decision.factored and "overrides" in decision.reason and isinstance(compressed[2], nn.BatchNorm2d)
    x = torch.randn(1, 3, 9, 9)
    torch.testing.assert_close(compressed(x), model(x), rtol=0, atol=0)


def test_a_hooked_batchnorm_is_not_folded_and_a_hooked_conv_stays_dense():
    # A hook must keep running: folded, the BN's hook was dropped; factored, the conv's.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 16, 3), nn.BatchNorm2d(16),
                          nn.Conv2d(16, 16, 3), nn.BatchNorm2d(16)).eval()
    _batchnorm_statistics(model[2])
    _batchnorm_statistics(model[4])
    ran = []
    model[2].register_forward_hook(lambda m, i, o: ran.append("bn") or o.clamp(min=0))
    model[3].register_forward_hook(lambda m, i, o: ran.append("conv") or o * 2)
    folded, report = decompose(model, "channel", energy=0.6)
    decisions = {d.name: d for d in report.layers}
    assert decisions["1"].factored and not decisions["1"].bn_folded and isinstance(folded[2], nn.BatchNorm2d)
    assert not decisions["3"].factored and "hooks" in decisions["3"].reason
    unfolded, _ = decompose(model, "channel", energy=0.6, fold_bn=False)
    x = torch.randn(1, 3, 9, 9)
    torch.testing.assert_close(folded(x), unfolded(x), rtol=0, atol=0)
    ran.clear()
    with torch.no_grad():
        folded(x)
    assert ran == ["bn", "conv"]


@pytest.mark.parametrize("arg,value", [("max_rank", -1), ("max_rank", 2.0), ("max_rank", True),
                                       ("value_threshold", float("nan")), ("value_threshold", -1e-3),
                                       ("value_threshold", "1e-3"), ("energy", "0.9"), ("energy", True)])
def test_decompose_checks_the_rank_rule_arguments(arg, value):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3))
    kwargs = {"energy": 0.99, arg: value}
    with pytest.raises(ValueError, match=f"argument '{arg}'"):
        decompose(model, "channel", **kwargs)


def test_rank_zero_from_a_cap_is_not_called_an_all_zero_weight():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3))
    _, report = decompose(model, "channel", energy=0.99, max_rank=0)
    (decision,) = report.layers
    assert decision.rank == 0 and not decision.factored and "all-zero" not in decision.reason
    with torch.no_grad():
        model[1].weight.zero_()
    _, report = decompose(model, "channel", energy=0.99)
    assert "all-zero weight" in report.layers[0].reason


class _StandardisedConv2d(nn.Conv2d):
    """A weight-standardised conv (BiT): it convolves with its weight normalised, not the raw one."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def test_conv_subclass_that_overrides_forward_stays_dense():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), _StandardisedConv2d(16, 16, 3, padding=1),
                          nn.Conv2d(16, 16, 3, padding=1)).eval()
    compressed, report = decompose(model, "channel", energy=0.5, fold_bn=False)
    decisions = {d.name: d for d in report.layers}
    assert not decisions["1"].factored and "overrides" in decisions["1"].reason
    assert decisions["2"].factored  # a plain conv beside it still is
    assert type(compressed[1]) is _StandardisedConv2d
    with pytest.raises(ValueError, match="overrides forward"):
        FactoredConv2d.from_conv(model[1], rank=4)
    h = torch.randn(1, 16, 8, 8)
    torch.testing.assert_close(compressed[1](h), model[1](h), rtol=0, atol=0)
