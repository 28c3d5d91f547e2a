"""factored_conv2d: both stages of a factored conv in one op.

PLACEHOLDER until the kernel issue (#5) lands: backed by trp_ext._reference (two F.conv2d calls).
The signature is final; FactoredConv2d does not change when the kernels land.
"""
from typing import Optional

import torch

from trp_ext import _reference as ref


def factored_conv2d(
    x: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride=1,
    padding=0,
    dilation=1,
    scheme: str = "channel",
    activation: Optional[str] = None,
) -> torch.Tensor:
    """The factored conv: conv(x, w1) then conv(., w2), bias, optional ReLU, per `scheme`."""
    return ref.factored_conv2d(x, w1, w2, bias, stride, padding, dilation, scheme, activation)
