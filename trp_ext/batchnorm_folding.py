"""Which conv -> BatchNorm pairs of a traced model may be folded into the conv, and the folding
of a dense one. decompose() folds into the factored layers it makes; metrics.deployment_form()
folds the dense convs a deployed network would.

Folding changes the conv module, and so every call and every read of it, and drops the BN
module, and so every call of that. It is exact only when:

* the model calls the conv and the BN once each, the BN right on the conv's output, which
  nothing else reads, and reads neither module's tensors by attribute (``self.conv.weight``);
* the BN normalises by running statistics (``track_running_stats=True``), as it does in eval
  mode, and is an ``nn.BatchNorm2d`` that keeps its class's forward;
* the conv is an ``nn.Conv2d`` that keeps its class's forward and ``_conv_forward`` (a
  weight-standardised conv overrides the latter), with no parametrization;
* neither module has hooks: a hook must keep running, and pruning and the old-style
  ``weight_norm`` compute the applied weight in a forward pre-hook.

torch.fx's ``fuse`` checks none of the calls or hooks: a conv called twice got its BN in both
calls, a hooked conv lost its hook, and a pruned one failed when called.
"""
import collections

import torch
from torch import fx, nn
from torch.nn.utils import parametrize
from torch.nn.utils.fusion import fuse_conv_bn_weights

from trp_ext.nn import overrides_forward


def hookless(module: nn.Module) -> bool:
    return not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def keeps_forward(module: nn.Module, base: type) -> bool:
    return isinstance(module, base) and type(module).forward is base.forward


def _foldable_conv(module) -> bool:
    return (isinstance(module, nn.Conv2d) and not overrides_forward(module) and hookless(module)
            and not parametrize.is_parametrized(module))


def _foldable_batchnorm(module) -> bool:
    return (keeps_forward(module, nn.BatchNorm2d) and hookless(module)
            and module.running_mean is not None and module.running_var is not None)


def foldable_pairs(traced: fx.GraphModule) -> dict:
    """{conv name: BatchNorm name} of the pairs of ``traced`` (``torch.fx.symbolic_trace`` of a
    model) that may be folded, by the rules of this module's docstring."""
    graph = traced.graph
    modules = dict(traced.named_modules())
    calls = collections.Counter(node.target for node in graph.nodes if node.op == "call_module")
    read = {node.target.rpartition(".")[0] for node in graph.nodes if node.op == "get_attr"}
    pairs = {}
    for node in graph.nodes:
        if node.op != "call_module" or not _foldable_batchnorm(modules.get(node.target)):
            continue
        source = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if (isinstance(source, fx.Node) and source.op == "call_module"
                and _foldable_conv(modules.get(source.target)) and len(source.users) == 1
                and calls[source.target] == 1 and calls[node.target] == 1
                and not {source.target, node.target} & read):
            pairs[source.target] = node.target
    return pairs


@torch.no_grad()
def fold_into_dense_convs(traced: fx.GraphModule) -> fx.GraphModule:
    """Folds every pair of :func:`foldable_pairs` into its conv (by its running statistics, as
    the BN computes in eval mode) and drops the BN's call, in place; returns ``traced``."""
    pairs = foldable_pairs(traced)
    for node in list(traced.graph.nodes):
        if node.op != "call_module" or node.target not in pairs.values():
            continue
        conv_node = node.args[0]
        conv, bn = traced.get_submodule(conv_node.target), traced.get_submodule(node.target)
        conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                      bn.eps, bn.weight, bn.bias)
        node.replace_all_uses_with(conv_node)
        traced.graph.erase_node(node)
    traced.graph.lint()
    traced.delete_all_unused_submodules()
    traced.recompile()
    return traced
