"""Schemes: how a layer's weight becomes the matrix TRP projects, and back; and the checks of the
rank rule's arguments, which TRP and decompose() share.

The conv reshapes themselves are the reference's (trp_ext._reference), so the production path
and the test oracle cannot drift apart. A linear layer's matrix is its weight, in every scheme.
"""
import numbers

import torch
import torch.nn as nn

from trp_ext._reference import (  # noqa: F401  (re-exported)
    SCHEMES,
    check_scheme,
    conv_weight_to_matrix,
    factor_conv_params,
    matrix_to_conv_weight,
    split_conv_weight,
)


def layer_matrix(module, scheme):
    """The matrix of a selected layer's weight (a copy only when the reshape needs one)."""
    weight = module.weight.detach()
    if isinstance(module, nn.Linear):
        return weight
    return conv_weight_to_matrix(weight, scheme)


def layer_matrix_shape(module, scheme):
    """The shape of :func:`layer_matrix`, without building the matrix (the same reshape, on the
    meta device)."""
    weight = torch.empty(module.weight.shape, device="meta")
    if isinstance(module, nn.Linear):
        return tuple(weight.shape)
    return tuple(conv_weight_to_matrix(weight, scheme).shape)


def matrix_to_layer_weight(matrix, module, scheme):
    """Inverse of :func:`layer_matrix`, shaped like ``module.weight``."""
    if isinstance(module, nn.Linear):
        return matrix
    return matrix_to_conv_weight(matrix, scheme, module.weight.shape)


def is_real(value):
    """A real scalar, Python's or NumPy's; not a bool (a flag passed by position to a number)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_integer(value):
    """An integral scalar, Python's or NumPy's; not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_rank_rule(energy, value_threshold, max_rank, energy_optional=False):
    """Raises a ValueError naming the argument unless energy is a number in (0, 1] (or None, when
    optional), value_threshold None or a number >= 0 (not NaN), and max_rank None or an integer >= 0."""
    if not ((energy_optional and energy is None) or (is_real(energy) and 0.0 < energy <= 1.0)):
        raise ValueError(f"argument 'energy' must be a real number in (0, 1], got {energy!r}")
    if value_threshold is not None and not (is_real(value_threshold) and value_threshold >= 0.0):
        raise ValueError(f"argument 'value_threshold' must be None or a non-negative number, got "
                         f"{value_threshold!r}")
    if max_rank is not None and not (is_integer(max_rank) and max_rank >= 0):
        raise ValueError(f"argument 'max_rank' must be None or a non-negative integer, got {max_rank!r}")
