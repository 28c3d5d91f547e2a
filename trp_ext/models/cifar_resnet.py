"""CIFAR ResNets of He et al. 2016 (Sec. 4.2): 6n+2 layers of BasicBlocks, 16/32/64 channels.

Shortcut: option A by default, as in the paper's CIFAR experiments: an identity shortcut that
subsamples by 2 and zero-pads the new channels when the shape changes, so the shortcut has no
parameters and the network has the paper's parameter counts (0.27M for ResNet-20, 0.85M for
ResNet-56). Option B (1x1 conv + BN projection) is available with ``shortcut="B"``.

Note: the published TRP code's "ResNet-56" is built from Bottleneck blocks; these are the
BasicBlock networks of the ResNet paper, which the TRP paper's tables name.
"""
import torch.nn as nn
import torch.nn.functional as F

from trp_ext.lowrank import is_integer
from trp_ext.models.init import init_resnet_weights


class PadShortcut(nn.Module):
    """Option A: subsample by `stride`, then zero-pad the channels up to `out_channels`."""

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.extra = out_channels - in_channels
        self.stride = stride

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra - half))


class BasicBlock(nn.Module):
    def __init__(self, in_channels, out_channels, stride=1, shortcut="A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            if shortcut == "A":
                self.shortcut = PadShortcut(in_channels, out_channels, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                    nn.BatchNorm2d(out_channels),
                )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth, num_classes=10, in_channels=3, shortcut="A", widths=(16, 32, 64)):
        super().__init__()
        if not is_integer(depth) or (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"argument 'depth' must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth!r}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"argument 'shortcut' must be 'A' or 'B', got {shortcut!r}")
        widths = tuple(widths) if isinstance(widths, (list, tuple)) else widths
        if not (isinstance(widths, tuple) and len(widths) == 3 and all(is_integer(w) and w >= 1 for w in widths)):
            raise ValueError(f"argument 'widths' must be three positive channel counts, got {widths!r}")
        if shortcut == "A" and list(widths) != sorted(widths):
            # option A pads the shortcut with zero channels: a narrower stage would crop it instead
            raise ValueError(f"argument 'widths' must not decrease with shortcut 'A' (zero-padded), got {widths!r}")
        blocks = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, channels = [], widths[0]
        for stage, width in enumerate(widths):
            stage_blocks = []
            for index in range(blocks):
                stride = 2 if stage > 0 and index == 0 else 1
                stage_blocks.append(BasicBlock(channels, width, stride, shortcut))
                channels = width
            layers.append(nn.Sequential(*stage_blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(channels, num_classes)
        init_resnet_weights(self)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def resnet20(**kwargs):
    return CifarResNet(20, **kwargs)


def resnet32(**kwargs):
    return CifarResNet(32, **kwargs)


def resnet44(**kwargs):
    return CifarResNet(44, **kwargs)


def resnet56(**kwargs):
    return CifarResNet(56, **kwargs)


def resnet110(**kwargs):
    return CifarResNet(110, **kwargs)
