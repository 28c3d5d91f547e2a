"""decompose(): turn a (TRP-)trained network into a factored one, ready for inference.

Each selected conv becomes a FactoredConv2d at the rank the rule picks, unless the factored form
would not save FLOPs (past the break-even rank), in which case it stays dense and the report says
so; so do a subclass of nn.Conv2d that overrides forward (or _conv_forward) and a conv with hooks.
With ``fold_bn=True`` a BatchNorm that directly follows a factored conv is folded into it (its
running statistics, so use the result in eval mode) where that is exact
(trp_ext.batchnorm_folding: the model calls each of the two once, the BN keeps running
statistics, neither has hooks). On a network trained without TRP this gives the classic
post-training baselines: Zhang et al. (channel) and Jaderberg et al. (spatial).
"""
import copy
from dataclasses import asdict, dataclass
from typing import List, Optional

import torch
import torch.fx
import torch.nn as nn

from trp_ext import _reference as ref
from trp_ext.batchnorm_folding import foldable_pairs, hookless
from trp_ext.lowrank import check_rank_rule, check_scheme, layer_matrix
from trp_ext.nn import FactoredConv2d, overrides_forward, replace_submodule
from trp_ext.selection import select_layers
from trp_ext.trp import unwrap_model


@dataclass
class LayerDecision:
    name: str
    rank: int
    full_rank: int
    dense_macs_per_pixel: int
    factored_macs_per_pixel: int
    factored: bool
    bn_folded: bool = False
    reason: str = ""


@dataclass
class DecomposeReport:
    scheme: str
    layers: List[LayerDecision]

    @property
    def factored(self):
        return [layer for layer in self.layers if layer.factored]

    @property
    def kept_dense(self):
        return [layer for layer in self.layers if not layer.factored]

    def mean_rank(self):
        return sum(layer.rank for layer in self.layers) / max(1, len(self.layers))

    def to_dict(self):
        return {"scheme": self.scheme, "layers": [asdict(layer) for layer in self.layers]}


def factored_macs_per_pixel(conv, rank, scheme):
    """Multiply-adds per output pixel of the factored conv.

    The spatial scheme's first (kh x 1) stage runs on the unstrided input width, so it costs
    W_in / W_out times more pixels than the output has, counted as stride_w: exact for convs padded
    to keep the size ("same" padding, ResNets' convs), an underestimate for unpadded dilated convs
    on small images, whose input is wider by a fixed margin (dilation_w * (kw - 1) - 2 * padding_w
    columns): decompose has no input size. ``trp_ext.metrics.count_cost`` counts a given input
    exactly.
    """
    c, n = conv.in_channels, conv.out_channels
    kh, kw = conv.kernel_size
    if scheme == "channel":
        return rank * (c * kh * kw + n)
    return rank * (c * kh * conv.stride[1] + n * kw)


def _rank_for(matrix, energy, value_threshold, max_rank):
    s = torch.linalg.svdvals(matrix.double())
    return ref.select_rank(s, energy if energy is not None else 1.0, value_threshold, max_rank)


def _following_batchnorms(model):
    """{conv name: bn name} of the conv -> BatchNorm pairs that may be folded (batchnorm_folding)."""
    try:
        traced = torch.fx.symbolic_trace(model)
    except Exception as error:  # noqa: BLE001 - any tracing failure means: cannot prove the pattern
        raise ValueError(
            f"decompose(fold_bn=True) needs a torch.fx-traceable model to find conv -> BatchNorm pairs "
            f"({type(error).__name__}: {error}); pass fold_bn=False"
        ) from None
    return foldable_pairs(traced)


def _unsplittable_reason(conv):
    """Why replacing ``conv`` by a factored layer would change what the model computes ("" when
    it would not)."""
    if overrides_forward(conv):  # e.g. a weight-standardised conv: its raw weight is not what it applies
        return f"{type(conv).__name__} overrides nn.Conv2d's forward (or _conv_forward)"
    if not hookless(conv):  # a forward hook, pruning's mask, weight_norm: the factored layer runs none
        return "has hooks, which a factored layer in its place would not run"
    return ""


def _fold_batchnorm(factored, bn):
    """Folds eval-mode BN into the factored conv: scale weight2's rows, shift the bias."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
        1.0 / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() - bn.running_mean * scale if bn.affine else -bn.running_mean * scale
    with torch.no_grad():
        factored.weight2.mul_(scale.to(factored.weight2.dtype).view(-1, 1, 1, 1))
        factored.bias.copy_(factored.bias * scale + shift)


@torch.no_grad()
def decompose(model, scheme="channel", energy: Optional[float] = None, value_threshold: Optional[float] = None,
              max_rank: Optional[int] = None, fold_bn: bool = True, include=None, exclude=None, predicate=None,
              inplace: bool = False):
    """Replaces each selected conv of ``model`` by a FactoredConv2d. Returns ``(model, report)``.

    The rank of each layer is the rank rule on its weight matrix in ``scheme``: the energy
    threshold ``energy``, capped by the count of singular values >= ``value_threshold`` and by
    ``max_rank``. Give at least one of ``energy`` and ``value_threshold``. A TRP-trained model is
    already low-rank, so a small value threshold (the published code uses 1e-2) recovers TRP's
    ranks and keeps its accuracy. TRP's own energy would not: applied again to the already
    truncated spectrum it keeps only that fraction of it (e of e), cutting below TRP's ranks. On a
    normally trained model the energy rule is the post-training baseline.

    The input model is left untouched unless ``inplace=True``.
    """
    check_scheme(scheme)
    if energy is None and value_threshold is None:
        raise ValueError("decompose() needs a rank rule: give argument 'energy' and/or 'value_threshold'")
    check_rank_rule(energy, value_threshold, max_rank, energy_optional=True)  # as TRP checks them
    model = unwrap_model(model)
    if not inplace:
        model = copy.deepcopy(model)
    layers = [(n, m) for n, m in select_layers(model, include, exclude, predicate) if isinstance(m, nn.Conv2d)]
    if not layers:
        raise ValueError("argument 'model' has no eligible conv layers to decompose")
    batchnorms = _following_batchnorms(model) if fold_bn else {}
    decisions = []
    for name, conv in layers:
        matrix = layer_matrix(conv, scheme)
        full_rank = min(matrix.shape)
        dense = conv.out_channels * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        unsplittable = _unsplittable_reason(conv)
        if unsplittable:
            decisions.append(LayerDecision(name, full_rank, full_rank, dense, dense, factored=False,
                                           reason=f"{unsplittable}: kept dense"))
            continue
        rank = _rank_for(matrix, energy, value_threshold, max_rank)
        factored = factored_macs_per_pixel(conv, rank, scheme)
        decision = LayerDecision(name, rank, full_rank, dense, factored, factored=rank >= 1 and factored < dense)
        if rank == 0:
            cause = "all-zero weight" if not matrix.any() else "max_rank or value_threshold leaves no singular value"
            decision.reason = f"rank 0 ({cause}): kept dense"
        elif not decision.factored:
            decision.reason = f"rank {rank} is past the break-even rank: factored MACs {factored} >= dense {dense}"
        else:
            module = FactoredConv2d.from_conv(conv, rank, scheme)
            if name in batchnorms:
                bn_name = batchnorms[name]
                _fold_batchnorm(module, model.get_submodule(bn_name))
                replace_submodule(model, bn_name, nn.Identity())
                decision.bn_folded = True
            replace_submodule(model, name, module)
        decisions.append(decision)
    return model, DecomposeReport(scheme, decisions)
