"""What every CPU path that a switch can force must do as the band path does: any input
layout, residuals, many input channels, opcheck and gradcheck, checked against the reference
composition for the channel-vectorised path (packed weights, exactly the output's positions)
and for split images (an image's work shared among threads by channels). Each path's own cases
are in test_factored_conv2d_channel_vectorised.py and test_factored_conv2d_split.py."""
import pytest
import torch

from trp_ext import _reference as ref
from trp_ext import ops
from test_factored_conv2d import _check, _factors, _input, _layouts, one_thread  # noqa: F401
from test_factored_conv2d_residual import RESIDUALS, _output_shape, _residual
from test_factored_conv2d_residual import _check as _check_residual

TOL = {torch.float32: 2e-5, torch.float64: 1e-12}


@pytest.fixture(params=["channel_vectorised", "split_images"])
def forced_path(request):
    """Every call the band path would run takes the path (split images: Winograd and the
    channel-vectorised path off, so that the band path runs every call)."""
    if request.param == "channel_vectorised":
        with ops.cpu_channel_vectorised("always"):
            yield request.param
    else:
        with ops.cpu_winograd("never"), ops.cpu_channel_vectorised("never"), ops.cpu_split_images("always"):
            yield request.param


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_many_input_channels(forced_path, scheme, dtype):
    """Enough channels for several channel groups of the first conv, at stride 2, batch 3 (split
    images run one after another); images past the size the channel-vectorised spatial scheme
    reads where they are (128 KiB), so it lays out planes as the channel scheme does (the other
    tests' small images are read in place)."""
    x = _input((3, 300, 14, 13), dtype)
    w1, w2, bias = _factors(scheme, 9, 300, 7, (3, 3), dtype)
    got = ops.factored_conv2d(x, w1, w2, bias, 2, 1, 1, scheme, "relu")
    _check(got, x, w1, w2, bias, 2, 1, 1, scheme, "relu", tol=TOL[dtype])


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced", "permuted", "channels_last_sliced"])
def test_memory_layouts(forced_path, scheme, layout):
    """Any input strides; the output (the input's memory format) written row by row where its
    rows are not consecutive."""
    x = _layouts("cpu")[layout]
    w1, w2, bias = _factors(scheme, 7, 6, 4, (3, 3), torch.float32)
    got = ops.factored_conv2d(x, w1, w2, bias, 2, 1, 1, scheme, None)
    _check(got, x, w1, w2, bias, 2, 1, 1, scheme, None, tol=2e-5)
    assert got.is_contiguous(memory_format=torch._prims_common.suggest_memory_format(x))


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("kind", RESIDUALS + ["per_pixel"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_residual_matches_reference(forced_path, scheme, kind, channels_last):
    """The residual in every layout and broadcast, with 9 output channels (a whole 8 x 8 block
    of the channel-vectorised path's transposing epilogue and a channel past it) over 11 x 9
    outputs."""
    x = _input((3, 5, 11, 9), torch.float32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w1, w2, bias = _factors(scheme, 9, 5, 4, (3, 3), torch.float32)
    for stride, padding, dilation in ((1, 1, 1), (2, (0, 2), (1, 2))):
        shape = _output_shape(x, w1, w2, stride, padding, dilation, scheme)
        residual = _residual(shape, kind, torch.float32, "cpu")
        _check_residual(x, w1, w2, bias, residual, stride, padding, dilation, scheme, "relu")


def test_opcheck(forced_path, one_thread):
    x = _layouts("cpu")["channels_last"]
    for scheme in ref.SCHEMES:
        w1, w2, bias = _factors(scheme, 5, 6, 3, (3, 3), torch.float32)
        torch.library.opcheck(torch.ops.trp_ext.factored_conv2d,
                              (x, w1, w2, bias, [2, 1], [1, 1], [1, 1], scheme, "relu"))


@pytest.mark.parametrize("scheme", ref.SCHEMES)
def test_gradcheck(forced_path, one_thread, scheme):
    x = _input((2, 3, 5, 6)).requires_grad_()
    w1, w2, bias = (t.requires_grad_() for t in _factors(scheme, 4, 3, 2, (3, 3)))
    assert torch.autograd.gradcheck(
        lambda *a: ops.factored_conv2d(*a, (1, 2), 1, 1, scheme, "relu"), (x, w1, w2, bias))
