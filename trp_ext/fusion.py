"""Epilogue fusion for deployed compressed models.

Two rewrites of a traced (torch.fx) model, each folding work that follows a factored conv into
the op's epilogue, applied while the output is still in registers instead of as separate passes
over the whole activation:

* ``fuse_residual``: ``conv(x) + shortcut``, and a ReLU right after that sum, become one call
  with ``residual=shortcut`` (and ``activation="relu"``). In a ResNet block that is the second
  conv, the residual add and the block's last ReLU.
* ``fuse_relu``: a ReLU that directly follows a factored conv (possibly through the
  ``nn.Identity`` a folded BatchNorm left behind) becomes the op's ``activation="relu"``. In a
  ResNet block that is the ReLU after the first conv.

A third, ``fast_calls``, changes how the op is called rather than what it computes: without its
Python autograd kernel when nothing needs a gradient.
"""
import inspect
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from trp_ext import _reference
from trp_ext.batchnorm_folding import hookless, keeps_forward
from trp_ext.ops import factored_conv2d
from trp_ext.ops.factored_conv2d import broadcasts_to, factored_conv2d_normalised, output_shape

# Tracing a FactoredConv2d goes through its Python wrapper down to the raw op, which is what the
# graph records; the wrapper and the reference composition (same arguments) are also accepted,
# for graphs that keep FactoredConv2d or a wrapper as a leaf. (A model traced with the reference
# patched in, as the end-to-end bench's unfused baseline, records its two F.conv2d calls instead:
# nothing to fold there.)
RAW_OP = torch.ops.trp_ext.factored_conv2d.default
FACTORED_CONV_FUNCTIONS = (factored_conv2d, RAW_OP, factored_conv2d_normalised, _reference.factored_conv2d)
OP_CALL = factored_conv2d_normalised  # the raw op's arguments, without its autograd kernel's cost
ARGUMENT_NAMES = ("x", "w1", "w2", "bias", "stride", "padding", "dilation", "scheme", "activation")
ACTIVATION_INDEX = 8  # position of `activation` among their arguments
PAIR_INDICES = (4, 5, 6)  # positions of `stride`, `padding` and `dilation`
RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_)
RELU_METHODS = ("relu", "relu_")
ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
ADD_METHODS = ("add", "add_")
INPLACE_ADD_FUNCTIONS = (operator.iadd,)  # these sums write into their first argument
INPLACE_ADD_METHODS = ("add_",)


def _is_relu(module: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in RELU_FUNCTIONS
    if node.op == "call_method":
        return node.target in RELU_METHODS
    if node.op == "call_module":  # a hook must keep running: a hooked module is no plain ReLU
        submodule = module.get_submodule(node.target)
        return keeps_forward(submodule, nn.ReLU) and hookless(submodule)
    return False


def _is_identity(module: fx.GraphModule, node: fx.Node) -> bool:
    if node.op != "call_module":
        return False
    submodule = module.get_submodule(node.target)
    return keeps_forward(submodule, nn.Identity) and hookless(submodule)


def _is_plain_add(node: fx.Node) -> bool:
    """A two-tensor sum without `alpha` (torch.add(a, b, alpha=2) scales b)."""
    is_add = ((node.op == "call_function" and node.target in ADD_FUNCTIONS)
              or (node.op == "call_method" and node.target in ADD_METHODS))
    return is_add and len(node.args) == 2 and not node.kwargs


def _is_inplace_add(node: fx.Node) -> bool:
    return ((node.op == "call_function" and node.target in INPLACE_ADD_FUNCTIONS)
            or (node.op == "call_method" and node.target in INPLACE_ADD_METHODS))


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


def _factored_conv_feeding(module: fx.GraphModule, node, allow_residual: bool):
    """The factored conv without an activation (and, unless `allow_residual`, without a
    residual) whose output reaches the user of `node` alone, through identities; or None."""
    while isinstance(node, fx.Node) and len(node.users) == 1:
        if node.op == "call_function" and node.target in FACTORED_CONV_FUNCTIONS:
            residual = node.args[9] if len(node.args) > 9 else node.kwargs.get("residual")
            plain = _activation(node) is None and (allow_residual or residual is None)
            return node if plain else None
        if not _is_identity(module, node):
            return None
        node = node.args[0]
    return None


def _erase_unused_chain(module: fx.GraphModule, node: fx.Node) -> None:
    """Erases `node` and the identities before it, back to and including the factored conv,
    once nothing uses them."""
    while isinstance(node, fx.Node) and not node.users:
        previous = node.args[0] if _is_identity(module, node) else None
        module.graph.erase_node(node)
        node = previous


def _conv_arguments(conv: fx.Node) -> list:
    """The conv's nine arguments (x .. activation) by position, defaults filled in."""
    if conv.target is RAW_OP:
        named = dict(zip(ARGUMENT_NAMES, conv.args), **conv.kwargs)
        return [named[name] for name in ARGUMENT_NAMES]
    bound = inspect.signature(conv.target).bind(*conv.args, **conv.kwargs)
    bound.apply_defaults()
    return [bound.arguments[name] for name in ARGUMENT_NAMES]


def factored_conv2d_residual(x, w1, w2, bias, stride, padding, dilation, scheme, activation, residual,
                             inplace=False):
    """``activation(factored_conv2d(...) + residual)``: in one call when the sum is what the op's
    residual computes (a tensor of x's dtype and device that broadcasts to the conv's output),
    else as the separate ops the traced model ran. A traced graph has no shapes, so
    ``fuse_residual`` cannot tell ahead of time. ``inplace``: the traced sum added into the
    conv's output (``y.add_(residual)``), so the separate ops do too, keeping that output's
    dtype and shape as it did (a float64 residual gives a float32 sum; a larger one raises)."""
    # Tried first without the check below, which cost more than a small batch-1 conv's kernel
    # (~12 us a call in a deployed ResNet-56): the op itself raises, before it computes
    # anything, on every sum it does not compute, and then the check decides as before (the
    # separate ops also raise any error that is not the residual's).
    try:
        return OP_CALL(x, w1, w2, bias, stride, padding, dilation, scheme, activation, residual)
    except (RuntimeError, TypeError, ValueError):
        pass
    stride, padding, dilation = (_reference._pair(v) for v in (stride, padding, dilation))
    if (isinstance(residual, torch.Tensor) and residual.dtype == x.dtype and residual.device == x.device
            and broadcasts_to(residual, output_shape(x, w1, w2, stride, padding, dilation, scheme))):
        return OP_CALL(x, w1, w2, bias, stride, padding, dilation, scheme, activation, residual)
    out = OP_CALL(x, w1, w2, bias, stride, padding, dilation, scheme, None)
    out = out.add_(residual) if inplace else out + residual
    return torch.relu(out) if activation == "relu" else out


def fuse_residual(module: fx.GraphModule) -> fx.GraphModule:
    """Folds each sum of a factored conv's output (its only use) and another tensor, and a ReLU
    that is the sum's only use, into one ``factored_conv2d_residual`` call, in place; returns
    `module`. Outputs are unchanged: the op adds the residual after the bias and before the
    ReLU, in the order the separate ops did.

    An in-place sum (``a.add_(b)``; tracing records ``a += b`` as a plain one) is folded only
    when ``a`` is the conv's output: nothing else reads that tensor, so the fused call's new
    tensor is all its readers see. Into another tensor (``shortcut.add_(conv(x))``), later reads
    of ``shortcut`` (which the graph records as reads of ``shortcut``'s node, not of the sum's)
    would miss the conv."""
    for add in list(module.graph.nodes):
        if not _is_plain_add(add):
            continue
        inplace = _is_inplace_add(add)
        conv = mine = other = None
        for mine, theirs in (add.args,) if inplace else (add.args, tuple(reversed(add.args))):
            conv = _factored_conv_feeding(module, mine, allow_residual=False)
            if conv is not None and isinstance(theirs, fx.Node):
                other = theirs
                break
        if other is None:
            continue
        users = list(add.users)
        last = users[0] if len(users) == 1 and _is_relu(module, users[0]) else add
        arguments = _conv_arguments(conv)
        arguments[ACTIVATION_INDEX] = "relu" if last is not add else None
        for index in PAIR_INDICES:  # as the op takes them (the wrapper also accepts an int)
            if not isinstance(arguments[index], fx.Node):
                arguments[index] = _reference._pair(arguments[index])
        with module.graph.inserting_before(add):
            fused = module.graph.call_function(factored_conv2d_residual, tuple(arguments) + (other,),
                                               {"inplace": True} if inplace else {})
        last.replace_all_uses_with(fused)
        if last is not add:
            module.graph.erase_node(last)
        module.graph.erase_node(add)
        _erase_unused_chain(module, mine)
    module.graph.lint()
    module.recompile()
    return module


def fuse_relu(module: fx.GraphModule) -> fx.GraphModule:
    """Folds each ReLU that only a factored conv feeds into that conv's activation, in place;
    returns `module`. Outputs are unchanged (an in-place ReLU only overwrote a tensor nothing
    else reads; a conv that adds a residual applies the ReLU after it)."""
    for node in list(module.graph.nodes):
        if not _is_relu(module, node):
            continue
        conv = _factored_conv_feeding(module, node.args[0] if node.args else None, allow_residual=True)
        if conv is None:
            continue
        _set_relu(conv)
        node.replace_all_uses_with(node.args[0])
        module.graph.erase_node(node)
    module.graph.lint()
    module.recompile()
    return module


def fast_calls(module: fx.GraphModule) -> fx.GraphModule:
    """Makes each call of the raw op (what tracing a FactoredConv2d records) a call of
    ``factored_conv2d_normalised``, which takes the same arguments and skips the op's Python
    autograd kernel when nothing needs a gradient (under ``torch.no_grad()``), in place; returns
    `module`. Outputs are unchanged."""
    for node in module.graph.nodes:
        if node.op == "call_function" and node.target is RAW_OP:
            node.target = OP_CALL
    module.graph.lint()
    module.recompile()
    return module
