"""energy_rank against the reference, opcheck, and bad input."""
import math

import pytest
import torch

from trp_ext import _reference as ref
from trp_ext import ops


def _spectra(rows, cols, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    tau = torch.rand(rows, 1, generator=gen, dtype=torch.float64) * cols + 0.5
    s = torch.exp(-torch.arange(cols, dtype=torch.float64) / tau)
    zero_tail = torch.randint(0, cols + 1, (rows,), generator=gen)
    s[torch.arange(cols) >= zero_tail[:, None]] = 0.0  # zero padding
    return s.to(dtype=dtype, device=device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows,cols", [(1, 1), (3, 7), (17, 64), (40, 513), (5, 2000)])
@pytest.mark.parametrize("energy", [0.3, 0.9, 0.99, 1.0])
def test_matches_reference(device, dtype, rows, cols, energy):
    s = _spectra(rows, cols, dtype, device, seed=rows * cols)
    expected = ref.energy_rank(s.cpu(), energy)
    got = ops.energy_rank(s, energy)
    assert got.dtype == torch.int64 and got.device.type == device
    torch.testing.assert_close(got.cpu(), expected, rtol=0, atol=0)


def test_energy_one_never_goes_past_the_last_nonzero_value(device):
    # At energy 1 the rank is the first index whose running sum reaches the total: a tie decided
    # by every rounding on the way. Long rows of slowly decaying values, then zeros.
    gen = torch.Generator().manual_seed(7)
    for cols in (40, 513, 2000):
        s = torch.rand(16, cols, generator=gen, dtype=torch.float64).sort(dim=1, descending=True).values
        nonzero = torch.randint(1, cols + 1, (16,), generator=gen)
        s[torch.arange(cols) >= nonzero[:, None]] = 0.0
        for dtype in (torch.float32, torch.float64):
            values = s.to(dtype)
            got = ops.energy_rank(values.to(device), 1.0).cpu()
            torch.testing.assert_close(got, ref.energy_rank(values, 1.0), rtol=0, atol=0)
            assert (got <= nonzero).all()


def test_hand_examples(device):
    s = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [5.0, 0.0, 0.0]], device=device)
    # row 0: energies 9, 16 of 25 -> 0.36 at r=1, 1.0 at r=2.
    assert ops.energy_rank(s, 0.36).tolist() == [1, 0, 2, 1]
    assert ops.energy_rank(s, 0.37).tolist() == [2, 0, 2, 1]
    assert ops.energy_rank(s, 1.0).tolist() == [2, 0, 3, 1]


def test_zero_columns_and_rows(device):
    assert ops.energy_rank(torch.zeros(4, 0, device=device), 0.5).tolist() == [0, 0, 0, 0]
    assert ops.energy_rank(torch.zeros(0, 5, device=device), 0.5).shape == (0,)


def test_one_dimensional_input(device):
    assert ops.energy_rank(torch.tensor([2.0, 1.0, 0.0], device=device), 0.5).item() == 1


def test_non_contiguous_input(device):
    s = _spectra(9, 30, torch.float64, device, seed=3)
    strided = s.t().contiguous().t()
    assert not strided.is_contiguous()
    torch.testing.assert_close(ops.energy_rank(strided, 0.8).cpu(), ref.energy_rank(s.cpu(), 0.8))


def test_opcheck(device):
    s = _spectra(6, 11, torch.float32, device, seed=1)
    torch.library.opcheck(torch.ops.trp_ext.energy_rank, (s, 0.9))


@pytest.mark.parametrize("scale", [2.0 ** 600, 1e300, 2.0 ** -600, 1e-310])
def test_values_whose_squares_leave_float64_keep_their_rank(device, scale):
    # Squared, 1e200 overflowed the sums (a row of equal values got rank 1 at energy 0.9), and
    # 1e-310 underflowed them (rank 0 for a non-zero row).
    s = _spectra(7, 12, torch.float64, device, seed=4)
    s = s / s.amax(dim=1, keepdim=True)
    expected = ops.energy_rank(s, 0.9).cpu()
    assert expected.min() > 0
    assert ops.energy_rank(s * scale, 0.9).cpu().tolist() == expected.tolist()
    assert ref.energy_rank((s * scale).cpu(), 0.9).tolist() == expected.tolist()
    assert ops.energy_rank(torch.full((1, 4), 1e200, dtype=torch.float64, device=device), 0.9).item() == 4


@pytest.mark.parametrize("energy", ["0.9", True, None])
def test_energy_must_be_a_number(energy):
    with pytest.raises(ValueError, match="argument 'energy' must be a number"):
        ops.energy_rank(torch.ones(2, 3), energy)


def test_an_energy_just_past_one_is_quoted_exactly(device):
    # Quoted with 6 digits it read "must lie in (0, 1], got 1".
    with pytest.raises(ValueError, match=r"got 1\.0000001"):
        ops.energy_rank(torch.ones(2, 3, device=device), 1.0000001)
    with pytest.raises(ValueError, match=r"got 1\.0000001"):
        ops.lowrank_project([torch.ones(2, 3, device=device)], 1.0000001)


@pytest.mark.parametrize("bad_energy", [0.0, -0.5, 1.5, math.nan, math.inf])
def test_energy_out_of_range_raises(device, bad_energy):
    with pytest.raises(ValueError, match="argument 'energy'"):
        ops.energy_rank(torch.ones(2, 3, device=device), bad_energy)


@pytest.mark.parametrize("bad_value", [math.nan, math.inf, -math.inf])
def test_nonfinite_values_raise_naming_the_row(device, bad_value):
    s = torch.ones(4, 5, device=device)
    s[2, 3] = bad_value
    with pytest.raises(ValueError, match="argument 's' has a NaN or Inf value in row 2"):
        ops.energy_rank(s, 0.9)


def test_wrong_rank_raises(device):
    with pytest.raises(ValueError, match="argument 's' must be 2-D"):
        ops.energy_rank(torch.ones(2, 3, 4, device=device), 0.9)


def test_integer_dtype_raises(device):
    with pytest.raises(TypeError, match="argument 's' must be float32 or float64"):
        ops.energy_rank(torch.ones(2, 3, dtype=torch.int64, device=device), 0.9)
