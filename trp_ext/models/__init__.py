"""Reference networks: CIFAR ResNets (He et al. 2016) and torchvision-compatible ImageNet ResNets."""
from trp_ext.models.cifar_resnet import (
    CifarResNet,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
)
from trp_ext.models.imagenet_resnet import ImageNetResNet, resnet18, resnet50

ARCHS = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "resnet18": resnet18,
    "resnet50": resnet50,
}


def build_model(arch, num_classes=10, in_channels=3, **kwargs):
    """Builds a model by name; see ``ARCHS``."""
    if arch not in ARCHS:
        raise ValueError(f"argument 'arch' must be one of {sorted(ARCHS)}, got {arch!r}")
    model = ARCHS[arch](num_classes=num_classes, in_channels=in_channels, **kwargs)
    # Recorded so that save_compressed/load_compressed can rebuild the network by name.
    model.trp_arch = {"name": arch, "num_classes": num_classes, "in_channels": in_channels, **kwargs}
    return model


__all__ = ["ARCHS", "build_model", "CifarResNet", "ImageNetResNet", "resnet20", "resnet32",
           "resnet44", "resnet56", "resnet110", "resnet18", "resnet50"]
