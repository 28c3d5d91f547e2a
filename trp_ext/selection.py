"""Which layers TRP projects and decompose() factors.

Default (as in the TRP paper and its code): every ``nn.Conv2d`` with a kernel larger than 1x1,
except the first conv of the network, whose few input channels leave nothing to factor. Stride-2
convs are included (the published code skips them; we do not). Grouped convs are never selected:
neither scheme factors them.
"""
import fnmatch

import torch.nn as nn


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
    if isinstance(module, nn.Conv2d):
        return module.groups == 1 and module.padding_mode == "zeros" and isinstance(module.padding, tuple)
    return include_linear and isinstance(module, nn.Linear)


def select_layers(model, include=None, exclude=None, predicate=None, include_linear=False):
    """Returns ``[(name, module), ...]`` of the layers to project, in registration order.

    Args:
        model: any ``nn.Module``.
        include: names or glob patterns (``"layer1.*"``) added to the selection even when the
            default rule would skip them (a 1x1 conv, the first conv, or a linear layer).
        exclude: names or glob patterns removed from the selection; wins over ``include``.
        predicate: ``f(name, module) -> bool`` replacing the default rule.
        include_linear: also select ``nn.Linear`` layers.
    """
    include = _as_patterns(include, "include")
    exclude = _as_patterns(exclude, "exclude")
    if predicate is not None and not callable(predicate):
        raise TypeError(f"argument 'predicate' must be callable, got {type(predicate).__name__}")
    first_conv = next((name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    selected = []
    for name, module in model.named_modules():
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
