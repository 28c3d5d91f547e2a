"""FactoredConv2d: a conv split into two thin convs, run by the fused ``factored_conv2d`` op."""
import torch
import torch.nn as nn
from torch.nn.modules.utils import _pair

from trp_ext import ops
from trp_ext.lowrank import check_scheme, is_integer, split_conv_weight
from trp_ext.selection import unfactorable_reason

ACTIVATIONS = (None, "relu")


def _checked_pair(name, value, least):
    """``value`` (an int, or two) as a pair of ints of at least ``least``, or a ValueError naming it."""
    pair = _pair(value)
    if len(pair) != 2 or not all(is_integer(v) and v >= least for v in pair):
        raise ValueError(f"argument '{name}' must be an int or a pair of ints of at least {least}, got {value!r}")
    return tuple(int(v) for v in pair)


class FactoredConv2d(nn.Module):
    """A rank-``rank`` factored conv: ``conv(x, weight1)`` then ``conv(., weight2)``, bias, activation.

    channel scheme: weight1 (rank, in, kh, kw), weight2 (out, rank, 1, 1)
    spatial scheme: weight1 (rank, in, kh, 1),  weight2 (out, rank, 1, kw)

    ``stride``, ``padding`` and ``dilation`` are the original conv's; the op applies each to the
    right factor. ``bias`` may carry a folded BatchNorm; ``activation`` is None or "relu".
    """

    def __init__(self, in_channels, out_channels, rank, kernel_size, stride=1, padding=0, dilation=1,
                 scheme="channel", bias=True, activation=None, device=None, dtype=None):
        super().__init__()
        check_scheme(scheme)
        if activation not in ACTIVATIONS:
            raise ValueError(f"argument 'activation' must be one of {ACTIVATIONS}, got {activation!r}")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("rank", rank)):
            if not is_integer(value) or value < 1:  # int() would take 2.9 as 2 and "3" as 3
                raise ValueError(f"argument '{name}' must be an integer of at least 1, got {value!r}")
        if isinstance(padding, str):  # the op takes explicit numbers; "same" would fail only at forward
            raise ValueError(f"argument 'padding' must be an int or a pair of ints (the factored conv takes "
                             f"explicit padding), got {padding!r}")
        factory = {"device": device, "dtype": dtype}
        self.in_channels, self.out_channels, self.rank = int(in_channels), int(out_channels), int(rank)
        self.kernel_size = _checked_pair("kernel_size", kernel_size, 1)
        self.stride = _checked_pair("stride", stride, 1)
        self.padding = _checked_pair("padding", padding, 0)
        self.dilation = _checked_pair("dilation", dilation, 1)
        self.scheme, self.activation = scheme, activation
        kh, kw = self.kernel_size
        if scheme == "channel":
            shape1, shape2 = (self.rank, self.in_channels, kh, kw), (self.out_channels, self.rank, 1, 1)
        else:
            shape1, shape2 = (self.rank, self.in_channels, kh, 1), (self.out_channels, self.rank, 1, kw)
        self.weight1 = nn.Parameter(torch.empty(shape1, **factory))
        self.weight2 = nn.Parameter(torch.empty(shape2, **factory))
        self.bias = nn.Parameter(torch.zeros(self.out_channels, **factory)) if bias else None
        nn.init.kaiming_uniform_(self.weight1, a=5 ** 0.5)
        nn.init.kaiming_uniform_(self.weight2, a=5 ** 0.5)

    @classmethod
    def from_conv(cls, conv, rank, scheme="channel"):
        """Splits a trained ``nn.Conv2d`` into its best rank-``rank`` factored form (truncated SVD)."""
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"argument 'conv' must be an nn.Conv2d, got {type(conv).__name__}")
        # groups, string padding and a padding_mode other than zeros: the op computes none of them
        reason = unfactorable_reason(conv)
        if reason:
            raise ValueError(f"argument 'conv' cannot be factored: it is {reason}")
        if overrides_forward(conv):
            raise ValueError(f"argument 'conv' cannot be factored: its class {type(conv).__name__} overrides "
                             f"forward (or _conv_forward), so its raw weight is not what it convolves with")
        weight = conv.weight.detach()
        module = cls(conv.in_channels, conv.out_channels, rank, conv.kernel_size, conv.stride, conv.padding,
                     conv.dilation, scheme, bias=True, device=weight.device, dtype=weight.dtype)
        w1, w2 = split_conv_weight(weight, scheme, rank)
        with torch.no_grad():
            module.weight1.copy_(w1)
            module.weight2.copy_(w2)
            module.bias.copy_(conv.bias.detach() if conv.bias is not None else torch.zeros_like(module.bias))
        return module

    def forward(self, x, residual=None):
        """The factored conv of x; `residual` (e.g. a ResNet block's shortcut) is added before the
        activation, in the same pass."""
        return ops.factored_conv2d(x, self.weight1, self.weight2, self.bias, self.stride, self.padding,
                                   self.dilation, self.scheme, self.activation, residual=residual)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, rank={self.rank}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, scheme={self.scheme!r}, "
                f"bias={self.bias is not None}, activation={self.activation!r}")


def overrides_forward(conv):
    """Whether ``conv``'s class (an nn.Conv2d subclass, e.g. a weight-standardised conv) replaces
    nn.Conv2d's forward or the ``_conv_forward`` it calls (where weight standardisation usually
    goes): then what it computes is not a conv with its weight, and splitting that weight, or
    folding a BatchNorm into it, would change it."""
    return type(conv).forward is not nn.Conv2d.forward or type(conv)._conv_forward is not nn.Conv2d._conv_forward


def replace_submodule(model, name, module):
    """Puts ``module`` at the dotted ``name`` inside ``model`` (``"layer1.0.conv1"``)."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)
