"""Schemes: how a layer's weight becomes the matrix TRP projects, and back.

The conv reshapes themselves are the reference's (trp_ext._reference), so the production path
and the test oracle cannot drift apart. A linear layer's matrix is its weight, in every scheme.
"""
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
