"""Reference networks: shapes, parameter counts, torchvision compatibility, layer selection."""
import pytest
import torch
import torch.nn as nn

from trp_ext import models
from trp_ext.selection import select_layers


def _params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch,millions", [("resnet20", 0.27), ("resnet32", 0.46), ("resnet44", 0.66),
                                            ("resnet56", 0.85), ("resnet110", 1.7)])
def test_cifar_resnet_matches_paper_parameter_counts(arch, millions):
    model = models.build_model(arch)
    assert abs(_params(model) / 1e6 - millions) / millions < 0.03
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_cifar_resnet_option_b_and_bad_depth():
    model = models.resnet20(shortcut="B", num_classes=7, in_channels=1)
    assert model(torch.randn(1, 1, 8, 8)).shape == (1, 7)
    with pytest.raises(ValueError, match="argument 'depth'"):
        models.CifarResNet(21)
    with pytest.raises(ValueError, match="argument 'arch'"):
        models.build_model("vgg16")


@pytest.mark.parametrize("kwargs", [dict(widths=(16, 32)), dict(widths=(16, 32, 64, 128)), dict(widths=(16, 0, 64)),
                                    dict(widths=(32, 16, 64)), dict(depth=20.0)])
def test_cifar_resnet_checks_depth_and_widths(kwargs):
    # Decreasing widths with option A cropped the shortcut's channels without a word.
    argument = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"argument '{argument}'"):
        models.CifarResNet(**{"depth": 20, **kwargs})
    assert models.CifarResNet(20, widths=(32, 16, 64), shortcut="B")(torch.zeros(1, 3, 8, 8)).shape == (1, 10)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_imagenet_resnet_loads_torchvision_weights(arch):
    torchvision = pytest.importorskip("torchvision")
    reference = getattr(torchvision.models, arch)(weights=None)
    ours = models.build_model(arch, num_classes=1000)
    ours.load_state_dict(reference.state_dict(), strict=True)
    ours.eval(), reference.eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(ours(x), reference(x))


def test_default_selection_skips_first_conv_and_1x1():
    model = models.resnet20(shortcut="B")
    names = [name for name, _ in select_layers(model)]
    assert "conv1" not in names
    assert "layer2.0.conv1" in names  # stride-2 convs are included
    assert not any("shortcut" in name for name in names)  # 1x1 projections are not
    assert len(names) == 18


def test_selection_include_exclude_predicate_linear():
    model = models.resnet20()
    names = [n for n, _ in select_layers(model, exclude="layer3.*", include=["conv1"])]
    assert "conv1" in names and not any(n.startswith("layer3") for n in names)
    assert [n for n, _ in select_layers(model, include_linear=True)][-1] == "fc"
    only_stride2 = select_layers(model, predicate=lambda n, m: isinstance(m, nn.Conv2d) and m.stride == (2, 2))
    assert [n for n, _ in only_stride2] == ["layer2.0.conv1", "layer3.0.conv1"]
    with pytest.raises(TypeError, match="argument 'predicate'"):
        select_layers(model, predicate=3)


def test_selection_skips_grouped_convs():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=2), nn.Conv2d(8, 8, 3))
    assert [n for n, _ in select_layers(model)] == ["2"]
