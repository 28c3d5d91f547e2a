"""The pure-PyTorch reference: reshapes, rank rules, projection, sub-gradient, split-then-compose."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from trp_ext import _reference as ref

KERNELS = [(3, 3), (1, 3), (3, 1), (5, 3), (2, 4)]
STRIDES = [1, 2, (2, 1)]
PADDINGS = [0, 1, 2, (0, 2)]
DILATIONS = [1, 2, (1, 2)]
CONV_CASES = list(itertools.product(KERNELS, STRIDES, PADDINGS, DILATIONS))


def _weight(n, c, kh, kw, seed=0):
    return torch.randn(n, c, kh, kw, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_matrix_reshape_round_trips(scheme, kernel):
    w = _weight(5, 3, *kernel)
    m = ref.conv_weight_to_matrix(w, scheme)
    expected_shape = (5, 3 * kernel[0] * kernel[1]) if scheme == "channel" else (3 * kernel[0], kernel[1] * 5)
    assert m.shape == expected_shape
    torch.testing.assert_close(ref.matrix_to_conv_weight(m, scheme, w.shape), w, rtol=0, atol=0)


def test_spatial_matrix_layout():
    w = _weight(4, 3, 2, 5)
    m = ref.conv_weight_to_matrix(w, "spatial")
    o, i, y, x = 2, 1, 1, 3
    assert m[i * 2 + y, x * 4 + o] == w[o, i, y, x]


def test_rank_rules():
    s = torch.tensor([4.0, 2.0, 1.0, 0.5])
    total = float((s * s).sum())
    assert ref.energy_rank(s, 16.0 / total).item() == 1
    assert ref.energy_rank(s, 16.01 / total).item() == 2
    assert ref.energy_rank(s, 1.0).item() == 4
    assert ref.energy_rank(torch.zeros(3), 0.5).item() == 0
    assert ref.value_rank(s, 1.0).item() == 3
    assert ref.select_rank(s, 1.0, value_threshold=1.5) == 2
    assert ref.select_rank(s, 1.0, max_rank=1) == 1


def test_projection_is_best_rank_r_approximation():
    a = torch.randn(12, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    projected, rank = ref.lowrank_project(a, 0.8)
    s = torch.linalg.svdvals(a)
    assert rank == ref.energy_rank(s, 0.8).item()
    assert torch.linalg.matrix_rank(projected).item() == rank
    # Eckart-Young: the error is exactly the energy of the dropped singular values.
    torch.testing.assert_close(torch.linalg.norm(a - projected) ** 2, (s[rank:] ** 2).sum())


def test_nuclear_subgradient():
    u, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    s = torch.tensor([5.0, 3.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    a = u[:, :5] @ torch.diag(s) @ v.t()
    torch.testing.assert_close(ref.nuclear_subgradient(a), u[:, :3] @ v[:, :3].t())
    torch.testing.assert_close(ref.nuclear_subgradient(a, rank=2), u[:, :2] @ v[:, :2].t())
    # <G, A> = ||A||_* for the full sub-gradient.
    torch.testing.assert_close((ref.nuclear_subgradient(a) * a).sum(), s.sum().double())


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("kernel,stride,padding,dilation", CONV_CASES)
def test_full_rank_split_reproduces_the_conv(scheme, kernel, stride, padding, dilation):
    n, c = 6, 4
    w = _weight(n, c, *kernel, seed=7)
    x = torch.randn(2, c, 11, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    bias = torch.randn(n, dtype=torch.float64)
    full_rank = min(ref.conv_weight_to_matrix(w, scheme).shape)
    w1, w2 = ref.split_conv_weight(w, scheme, full_rank)
    expected = F.conv2d(x, w, bias, stride, padding, dilation)
    got = ref.factored_conv2d(x, w1, w2, bias, stride, padding, dilation, scheme)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("kernel,stride,padding,dilation", CONV_CASES[::3])
@pytest.mark.parametrize("rank", [1, 3])
def test_rank_r_split_equals_conv_with_projected_weight(scheme, kernel, stride, padding, dilation, rank):
    n, c = 6, 4
    w = _weight(n, c, *kernel, seed=9)
    x = torch.randn(2, c, 10, 13, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    matrix = ref.conv_weight_to_matrix(w, scheme)
    projected, _ = ref.lowrank_project(matrix, 1.0, max_rank=rank)
    w_rank_r = ref.matrix_to_conv_weight(projected, scheme, w.shape)
    w1, w2 = ref.split_conv_weight(w, scheme, rank)
    expected = F.conv2d(x, w_rank_r, None, stride, padding, dilation)
    got = ref.factored_conv2d(x, w1, w2, None, stride, padding, dilation, scheme, activation="relu")
    torch.testing.assert_close(got, F.relu(expected), rtol=1e-10, atol=1e-10)


def test_factor_shapes():
    w = _weight(8, 5, 3, 2)
    w1, w2 = ref.split_conv_weight(w, "channel", 4)
    assert w1.shape == (4, 5, 3, 2) and w2.shape == (8, 4, 1, 1)
    w1, w2 = ref.split_conv_weight(w, "spatial", 4)
    assert w1.shape == (4, 5, 3, 1) and w2.shape == (8, 4, 1, 2)


def test_unknown_scheme_raises():
    with pytest.raises(ValueError, match="argument 'scheme'"):
        ref.conv_weight_to_matrix(_weight(2, 2, 3, 3), "diagonal")
