"""Which layers TRP projects and decompose() factors.

Default (as in the TRP paper and its code): every ``nn.Conv2d`` with a kernel larger than 1x1,
except the first conv of the network, whose few input channels leave nothing to factor. Stride-2
convs are included (the published code skips them; we do not). Grouped convs are never selected:
neither scheme factors them, and neither are convs with string padding ("same", "valid") or a
padding_mode other than "zeros", which the factored conv does not implement. Nor are layers
whose weight is computed rather than stored (``torch.nn.utils.parametrizations.weight_norm`` or
``spectral_norm``, hook-based ``weight_norm``): TRP would project a copy that the next forward
recomputes, and a factored layer would drop the parametrization that defines the weight.
"""
import fnmatch

import torch.nn as nn
from torch.nn.utils import parametrize


def _matches(name, patterns):
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _as_patterns(value, arg):
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    try:
        patterns = tuple(value)
    except TypeError:
        raise TypeError(f"argument '{arg}' must be a name, a glob pattern, or a list of them") from None
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"argument '{arg}' must hold strings, got {patterns!r}")
    return patterns


def is_factorable(module, include_linear=False):
    return not unfactorable_reason(module, include_linear)


def _computed_weight_reason(module):
    """Why ``module.weight`` is not a stored parameter that can be written in place ("" when it is)."""
    if parametrize.is_parametrized(module, "weight"):
        return "a layer with a parametrized weight (e.g. weight_norm or spectral_norm), recomputed at every forward"
    if not isinstance(module._parameters.get("weight"), nn.Parameter):
        return "a layer whose weight is not a registered parameter (e.g. hook-based weight_norm recomputes it)"
    return ""


def unfactorable_reason(module, include_linear=True):
    """Why neither scheme can factor ``module`` ("" when it can)."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        computed = _computed_weight_reason(module)
        if computed:
            return computed
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return f"a grouped conv (groups={module.groups})"
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r} (the factored conv pads with zeros)"
        if not isinstance(module.padding, tuple):
            return f"padding={module.padding!r} (the factored conv takes explicit padding)"
        return ""
    if isinstance(module, nn.Linear):
        return "" if include_linear else "a linear layer (pass include_linear=True)"
    return f"a {type(module).__name__}, not a conv or linear layer"


def _check_patterns(modules, patterns, arg):
    """Raises a ValueError naming `arg` for a pattern that matches no module or only containers (a
    typo, or a container's name where its layers' were meant, would otherwise change nothing,
    silently), and for an include pattern that matches only layers that cannot be factored."""
    layers = [name for name, module in modules if is_factorable(module, include_linear=True)]
    for pattern in patterns:
        if any(fnmatch.fnmatchcase(name, pattern) for name in layers):
            continue
        matched = [(name, module) for name, module in modules if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            raise ValueError(f"argument '{arg}': pattern {pattern!r} matches no module of the model")
        # A parametrized conv holds its parametrizations as children, but is a layer all the same.
        leaves = [(name, module) for name, module in matched
                  if isinstance(module, (nn.Conv2d, nn.Linear)) or not any(True for _ in module.children())]
        if not leaves:
            name = matched[0][0]
            raise ValueError(f"argument '{arg}': pattern {pattern!r} matches the container '{name}', not a "
                             f"layer; to match the layers inside it, use {pattern + '.*'!r}")
        if arg == "exclude":
            continue  # excluding a layer that could never be selected is harmless
        name, module = leaves[0]
        raise ValueError(f"argument '{arg}': pattern {pattern!r} matches '{name}', which cannot be factored: "
                         f"it is {unfactorable_reason(module)}")


def select_layers(model, include=None, exclude=None, predicate=None, include_linear=False):
    """Returns ``[(name, module), ...]`` of the layers to project, in registration order.

    Args:
        model: any ``nn.Module``.
        include: names or glob patterns (``"layer1.*"``) added to the selection even when the
            default rule would skip them (a 1x1 conv, the first conv, or a linear layer).
        exclude: names or glob patterns removed from the selection; wins over ``include``.
            A pattern that matches no module, or only containers, raises a ValueError (a typo,
            or ``"layer3"`` where ``"layer3.*"`` was meant, would otherwise change nothing), as
            does an ``include`` pattern that matches only layers that cannot be factored.
        predicate: ``f(name, module) -> bool`` replacing the default rule.
        include_linear: also select ``nn.Linear`` layers.
    """
    include = _as_patterns(include, "include")
    exclude = _as_patterns(exclude, "exclude")
    if predicate is not None and not callable(predicate):
        raise TypeError(f"argument 'predicate' must be callable, got {type(predicate).__name__}")
    modules = list(model.named_modules())
    _check_patterns(modules, include, "include")
    _check_patterns(modules, exclude, "exclude")
    first_conv = next((name for name, m in modules if isinstance(m, nn.Conv2d)), None)
    selected = []
    for name, module in modules:
        if not is_factorable(module, include_linear=True):
            continue
        if predicate is not None:
            chosen = bool(predicate(name, module))
        elif isinstance(module, nn.Linear):
            chosen = include_linear
        else:
            chosen = module.kernel_size[0] * module.kernel_size[1] > 1 and name != first_conv
        chosen = (chosen or _matches(name, include)) and not _matches(name, exclude)
        if chosen:
            selected.append((name, module))
    return selected
