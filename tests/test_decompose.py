"""decompose(): factored model equals the projected dense model; BN folding; break-even; baselines."""
import pytest
import torch
import torch.nn as nn

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
