"""Python overhead trimmed from a traced (torch.fx) model, for deployment.

A traced ResNet spends a large share of a small-batch forward in Python rather than in its
kernels: each node reaches its module or weight through ``getattr(self.layer1, "0").conv1``, one
``nn.Module.__getattr__`` per level, and a module call runs ``nn.Module.__call__``'s hook
machinery even for an ``nn.Identity``. ``lean_graph`` rewrites the graph so that the same kernels
run with less of that around them, and the outputs are bit-identical:

* calls of ``nn.Identity`` modules (a folded BatchNorm leaves one, and ResNet shortcuts are one)
  are dropped: their users read the input;
* calls of ``nn.Conv2d`` (zero padding) and ``nn.Linear`` modules become the ``F.conv2d`` and
  ``F.linear`` calls their ``forward`` makes, with the same arguments;
* weights read through a dotted path (``layer1.0.conv1.weight1``) are registered on the top
  module under one flat name, and the submodules left unused are deleted.

Only modules of exactly these types, with no hooks, are rewritten: a subclass may override
``forward``, and a hook must keep running.
"""
import torch.nn.functional as F
from torch import fx, nn

from trp_ext.batchnorm_folding import hookless


def _single_input(node: fx.Node) -> bool:
    return len(node.args) == 1 and not node.kwargs


class _FlatNames:
    """Registers the tensors behind dotted attribute paths on the top module under flat names:
    one name per tensor, however many paths or nodes read it."""

    def __init__(self, module: fx.GraphModule):
        self.module = module
        self.by_tensor = {}  # id(tensor) -> flat name

    def __call__(self, target: str) -> str:
        if "." not in target:
            return target
        owner_path, _, leaf = target.rpartition(".")
        owner = self.module.get_submodule(owner_path)
        value = getattr(owner, leaf)
        if id(value) in self.by_tensor:
            return self.by_tensor[id(value)]
        name = base = target.replace(".", "_")
        suffix = 0
        while hasattr(self.module, name):
            suffix += 1
            name = f"{base}_{suffix}"
        if leaf in owner._parameters:
            self.module.register_parameter(name, value)
        elif leaf in owner._buffers:
            self.module.register_buffer(name, value, persistent=leaf not in owner._non_persistent_buffers_set)
        else:
            setattr(self.module, name, value)
        self.by_tensor[id(value)] = name
        return name


def _functional_call(graph: fx.Graph, node: fx.Node, module: nn.Module, flat: _FlatNames):
    """The F.conv2d or F.linear call that `module`'s forward makes, inserted before `node`; or
    None when `module` is not one this pass rewrites."""
    if type(module) is nn.Conv2d and module.padding_mode == "zeros":
        function = F.conv2d
        extra = (module.stride, module.padding, module.dilation, module.groups)
    elif type(module) is nn.Linear:
        function, extra = F.linear, ()
    else:
        return None
    with graph.inserting_before(node):
        weight = graph.get_attr(flat(f"{node.target}.weight"))
        bias = graph.get_attr(flat(f"{node.target}.bias")) if module.bias is not None else None
        return graph.call_function(function, (node.args[0], weight, bias) + extra)


def lean_graph(module: fx.GraphModule) -> fx.GraphModule:
    """Rewrites `module` in place as described in this module's docstring; returns it."""
    graph = module.graph
    flat = _FlatNames(module)
    for node in list(graph.nodes):
        if node.op == "call_module" and _single_input(node):
            submodule = module.get_submodule(node.target)
            if not hookless(submodule):
                continue
            if type(submodule) is nn.Identity:
                node.replace_all_uses_with(node.args[0])
                graph.erase_node(node)
                continue
            call = _functional_call(graph, node, submodule, flat)
            if call is not None:
                node.replace_all_uses_with(call)
                graph.erase_node(node)
        elif node.op == "get_attr":
            node.target = flat(node.target)
    graph.lint()
    module.delete_all_unused_submodules()
    module.recompile()
    return module
