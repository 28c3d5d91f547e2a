"""The CPU factored_conv2d's channel-vectorised path (packed weights, exactly the output's
positions) against the reference composition, and the mode that selects it (its switch is
tested with the Winograd one, in test_factored_conv2d_winograd.py; layouts, residuals, opcheck
and gradcheck with every forced path, in test_factored_conv2d_forced_paths.py)."""
import pytest
import torch

from trp_ext import _reference as ref
from trp_ext import ops
from test_factored_conv2d import CHANNELS, GEOMETRY, _check, _factors, _input

TOL = {torch.float32: 2e-5, torch.float64: 1e-12}


@pytest.fixture
def always():
    with ops.cpu_channel_vectorised("always"):
        yield


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("kernel,stride,padding,dilation", GEOMETRY)
def test_geometry_matches_reference(always, scheme, kernel, stride, padding, dilation):
    """Every stride/padding/dilation/kernel combination of the main tests, odd H and W."""
    x = _input((2, 3, 11, 9))
    w1, w2, bias = _factors(scheme, 5, 3, 4, kernel)
    got = ops.factored_conv2d(x, w1, w2, bias, stride, padding, dilation, scheme, "relu")
    _check(got, x, w1, w2, bias, stride, padding, dilation, scheme, "relu", tol=1e-12)


# Ranks and output channels around the weight panels (32 float32 or 16 float64 channels): one
# short panel, whole panels, one channel past them.
PANEL_CHANNELS = CHANNELS + [(4, 32, 32), (4, 33, 31), (3, 16, 65)]


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("c,r,n", PANEL_CHANNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias,activation", [(True, None), (True, "relu"), (False, None)])
def test_channels_match_reference(always, scheme, c, r, n, dtype, bias, activation):
    x = _input((3, c, 9, 8), dtype)
    w1, w2, b = _factors(scheme, n, c, r, (3, 3), dtype)
    b = b if bias else None
    got = ops.factored_conv2d(x, w1, w2, b, 1, 1, 1, scheme, activation)
    _check(got, x, w1, w2, b, 1, 1, 1, scheme, activation, tol=TOL[dtype])


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("c,r,size", [(0, 3, (6, 5)), (3, 0, (6, 5)), (3, 4, (0, 5))])
def test_no_channels_or_an_input_of_padding_only(always, scheme, c, r, size):
    """No input channels, rank 0, or an input of padding only: the bias at every pixel (torch's
    convs, which the reference composes, refuse these shapes)."""
    x = _input((2, c, *size))
    w1, w2, bias = _factors(scheme, 4, c, r, (3, 3) if size[0] else (1, 1))
    got = ops.factored_conv2d(x, w1, w2, bias, 1, 1, 1, scheme, None)
    assert got.shape[:2] == (2, 4) and got.numel() > 0
    torch.testing.assert_close(got, bias.view(1, -1, 1, 1).expand_as(got))


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("size", [(1, 1), (1, 7), (2, 7), (7, 7), (3, 5), (13, 1), (5, 9)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_position_counts(always, scheme, size, threads):
    """Output sizes whose position counts end in every block remainder (7 and 49 positions run
    their last seven as 4 + 3, one position a block of one), at batches that leave threads idle
    or uneven."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = _input((5, 4, *size), torch.float32)
        w1, w2, bias = _factors(scheme, 40, 4, 35, (3, 3), torch.float32)
        got = ops.factored_conv2d(x, w1, w2, bias, 1, 1, 1, scheme, "relu")
    finally:
        torch.set_num_threads(previous)
    _check(got, x, w1, w2, bias, 1, 1, 1, scheme, "relu", tol=2e-5)


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_reach_every_output_they_touch(always, scheme, value):
    """A NaN or Inf first-conv weight reaches every output whose window it is in, those whose
    window holds padding included (0 * w is NaN), as on the band path and in torch's convs: the
    spatial scheme then lays out planes instead of reading the input in place, which skips the
    padding."""
    x = _input((2, 3, 6, 5), torch.float32)
    w1, w2, bias = _factors(scheme, 4, 3, 2, (3, 3), torch.float32)
    w1[0, 0, 0, 0] = value
    got = ops.factored_conv2d(x, w1, w2, bias, 1, 1, 1, scheme, None)
    with ops.cpu_channel_vectorised("never"):
        band = ops.factored_conv2d(x, w1, w2, bias, 1, 1, 1, scheme, None)
    assert torch.isnan(band[:, :, 0]).all()  # the first output row's window holds padding
    assert torch.equal(torch.isnan(got), torch.isnan(band))
    assert torch.equal(torch.isfinite(got), torch.isfinite(band))


@pytest.mark.parametrize("scheme", ref.SCHEMES)
def test_nan_stays_in_its_windows(always, scheme):
    """A NaN reaches exactly the outputs whose window holds it, as on the band path."""
    x = _input((2, 3, 8, 7), torch.float32)
    x[1, 2, 3, 4] = float("nan")
    w1, w2, bias = _factors(scheme, 10, 3, 4, (3, 3), torch.float32)
    got = ops.factored_conv2d(x, w1, w2, bias, 1, 1, 1, scheme, "relu")
    with ops.cpu_channel_vectorised("never"):
        band = ops.factored_conv2d(x, w1, w2, bias, 1, 1, 1, scheme, "relu")
    assert torch.isnan(band).any()
    assert torch.equal(torch.isnan(got), torch.isnan(band))


def test_auto_mode_takes_it_where_it_saves_work():
    """At 2 threads, auto gives bit for bit the result of always on an ImageNet-like layer with
    7 x 7 outputs (a band computes 56 positions for 49) at batch 4, and that of never at batch 1
    (one image is one thread's work here), at rank 10 (padded to a 32-channel panel) and past
    32 x 32 outputs (whole images outgrow the caches). Winograd off: these 3x3 stride-1 layers
    would take it first."""
    def run(mode, x, factors):
        w1, w2, bias = factors
        with ops.cpu_channel_vectorised(mode), ops.cpu_winograd("never"):
            return ops.factored_conv2d(x, w1, w2, bias, 1, 1, 1, "spatial", "relu")

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = _input((4, 64, 7, 7), torch.float32)
        wide = _factors("spatial", 64, 64, 32, (3, 3), torch.float32)
        narrow = _factors("spatial", 64, 64, 10, (3, 3), torch.float32)
        assert torch.equal(run("auto", x, wide), run("always", x, wide))
        assert not torch.equal(run("always", x, wide), run("never", x, wide))
        assert torch.equal(run("auto", x[:1], wide), run("never", x[:1], wide))
        assert torch.equal(run("auto", x, narrow), run("never", x, narrow))
        large = _input((4, 64, 33, 33), torch.float32)  # past 32 x 32 outputs: the band path
        assert torch.equal(run("auto", large, wide), run("never", large, wide))
    finally:
        torch.set_num_threads(previous)

