"""Epilogue fusion for deployed compressed models.

A ReLU that directly follows a factored conv (possibly through the ``nn.Identity`` a folded
BatchNorm left behind) becomes the factored conv's own ``activation="relu"``: the op applies it
while the output is still in registers, instead of a separate pass over the whole activation.
In a ResNet block that is the ReLU after each block's first conv.
"""
import torch
import torch.nn.functional as F
from torch import fx, nn

from trp_ext import _reference
from trp_ext.ops import factored_conv2d

# Tracing a FactoredConv2d goes through its Python wrapper down to the raw op, which is what the
# graph records; the wrapper and the reference composition (same arguments) are also accepted,
# for graphs that keep FactoredConv2d or a wrapper as a leaf. (A model traced with the reference
# patched in, as the end-to-end bench's unfused baseline, records its two F.conv2d calls instead:
# nothing to fold there.)
FACTORED_CONV_FUNCTIONS = (factored_conv2d, torch.ops.trp_ext.factored_conv2d.default,
                           _reference.factored_conv2d)
ACTIVATION_INDEX = 8  # position of `activation` among their arguments
RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_)
RELU_METHODS = ("relu", "relu_")


def _is_relu(module: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in RELU_FUNCTIONS
    if node.op == "call_method":
        return node.target in RELU_METHODS
    if node.op == "call_module":
        return isinstance(module.get_submodule(node.target), nn.ReLU)
    return False


def _is_identity(module: fx.GraphModule, node: fx.Node) -> bool:
    return node.op == "call_module" and isinstance(module.get_submodule(node.target), nn.Identity)


def _activation(node: fx.Node):
    if len(node.args) > ACTIVATION_INDEX:
        return node.args[ACTIVATION_INDEX]
    return node.kwargs.get("activation")


def _set_relu(node: fx.Node) -> None:
    if len(node.args) > ACTIVATION_INDEX:
        args = list(node.args)
        args[ACTIVATION_INDEX] = "relu"
        node.args = tuple(args)
    else:
        node.kwargs = {**node.kwargs, "activation": "relu"}


def _factored_conv_before(module: fx.GraphModule, relu: fx.Node):
    """The factored conv whose output reaches `relu` alone (through identities), or None."""
    node = relu.args[0] if relu.args else None
    while isinstance(node, fx.Node) and len(node.users) == 1:
        if node.op == "call_function" and node.target in FACTORED_CONV_FUNCTIONS:
            return node if _activation(node) is None else None
        if not _is_identity(module, node):
            return None
        node = node.args[0]
    return None


def fuse_relu(module: fx.GraphModule) -> fx.GraphModule:
    """Folds each ReLU that only a factored conv feeds into that conv's activation, in place;
    returns `module`. Outputs are unchanged (an in-place ReLU only overwrote a tensor nothing
    else reads)."""
    for node in list(module.graph.nodes):
        if not _is_relu(module, node):
            continue
        conv = _factored_conv_before(module, node)
        if conv is None:
            continue
        _set_relu(conv)
        node.replace_all_uses_with(node.args[0])
        module.graph.erase_node(node)
    module.graph.lint()
    module.recompile()
    return module
