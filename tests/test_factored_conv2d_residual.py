"""factored_conv2d's residual epilogue, relu(conv(x) + bias + residual), against the reference
composition: shapes, layouts, broadcasting, both CPU paths (direct and Winograd), opcheck,
gradcheck, and bad input."""
import pytest
import torch
from torch._prims_common import suggest_memory_format

from trp_ext import _reference as ref
from trp_ext import ops
from test_factored_conv2d import _factors, _input, one_thread  # noqa: F401 (fixture)

TOL = {torch.float32: 2e-5, torch.float64: 1e-12}


def _output_shape(x, w1, w2, stride, padding, dilation, scheme):
    return ref.factored_conv2d(x.double().cpu(), w1.double().cpu(), w2.double().cpu(), None, stride, padding,
                               dilation, scheme).shape


def _check(x, w1, w2, bias, residual, stride, padding, dilation, scheme, activation):
    got = ops.factored_conv2d(x, w1, w2, bias, stride, padding, dilation, scheme, activation, residual=residual)
    cpu64 = [t.detach().cpu().double() if t is not None else None for t in (x, w1, w2, bias, residual)]
    expected = ref.factored_conv2d(*cpu64[:4], stride, padding, dilation, scheme, activation, residual=cpu64[4])
    assert got.shape == expected.shape and got.dtype == x.dtype and got.device == x.device
    assert got.is_contiguous(memory_format=suggest_memory_format(x))  # x's format, whatever the residual's
    tol = TOL.get(x.dtype, 1e-2)
    torch.testing.assert_close(got.cpu().double(), expected, rtol=tol, atol=tol)


def _residual(shape, kind, dtype, device, seed=7):
    """A residual for an output of `shape`: the whole shape in several layouts, or one that
    broadcasts to it."""
    full = _input(shape, dtype, device, seed)
    n, c, h, w = shape
    if kind == "contiguous":
        return full
    if kind == "channels_last":
        return full.contiguous(memory_format=torch.channels_last)
    if kind == "sliced":  # non-contiguous: every other column of a wider tensor
        return _input((n, c, h, 2 * w), dtype, device, seed)[..., ::2]
    if kind == "per_channel":
        return _input((c, 1, 1), dtype, device, seed)
    if kind == "per_row":  # broadcast along the width: the strided copy path
        return _input((1, 1, h, 1), dtype, device, seed)
    if kind == "image":  # broadcast along the batch
        return _input((1, c, h, w), dtype, device, seed)
    if kind == "per_pixel":  # broadcast along the channels
        return _input((n, 1, h, w), dtype, device, seed)
    raise ValueError(kind)


RESIDUALS = ["contiguous", "channels_last", "sliced", "per_channel", "per_row", "image"]


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("kind", RESIDUALS)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_residual_matches_reference(device, scheme, kind, channels_last, activation):
    x = _input((3, 5, 11, 9), torch.float32, device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w1, w2, bias = _factors(scheme, 7, 5, 4, (3, 3), torch.float32, device)
    for stride, padding, dilation in ((1, 1, 1), (2, (0, 2), (1, 2))):
        shape = _output_shape(x, w1, w2, stride, padding, dilation, scheme)
        residual = _residual(shape, kind, torch.float32, device)
        _check(x, w1, w2, bias, residual, stride, padding, dilation, scheme, activation)


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch,size", [(1, (7, 7)), (64, (9, 15)), (2, (33, 5))])
def test_residual_batch_sizes_and_dtypes(device, scheme, dtype, batch, size):
    x = _input((batch, 6, *size), dtype, device)
    w1, w2, bias = _factors(scheme, 6, 6, 2, (3, 3), dtype, device)
    residual = _residual(_output_shape(x, w1, w2, 1, 1, 1, scheme), "contiguous", dtype, device)
    _check(x, w1, w2, None, residual, 1, 1, 1, scheme, "relu")


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("mode", ["never", "always"])
@pytest.mark.parametrize("kind", RESIDUALS)
def test_residual_on_both_cpu_paths(scheme, mode, kind):
    """The direct kernel and the Winograd paths add the residual in their own epilogue: into
    NCHW outputs as they write them, else in the copy-out."""
    x = _input((3, 8, 13, 10), torch.float32)
    w1, w2, bias = _factors(scheme, 9, 8, 5, (3, 3), torch.float32)
    residual = _residual((3, 9, 13, 10), kind, torch.float32, "cpu")
    with ops.cpu_winograd(mode):
        _check(x, w1, w2, bias, residual, 1, 1, 1, scheme, "relu")


def test_residual_is_added_before_the_relu():
    """relu(conv + residual), not relu(conv) + residual: a residual that cancels the conv
    leaves zeros, a large negative one makes every output zero."""
    x = _input((2, 3, 6, 6), torch.float64)
    w1, w2, bias = _factors("channel", 4, 3, 2, (3, 3))
    conv = ops.factored_conv2d(x, w1, w2, bias, 1, 1, 1, "channel", None)
    cancelled = ops.factored_conv2d(x, w1, w2, bias, 1, 1, 1, "channel", "relu", residual=-conv)
    assert torch.equal(cancelled, torch.zeros_like(conv))
    low = ops.factored_conv2d(x, w1, w2, bias, 1, 1, 1, "channel", "relu", residual=torch.full_like(conv, -1e3))
    assert torch.equal(low, torch.zeros_like(conv))


def test_residual_keeps_nan(device):
    x = _input((1, 2, 5, 5), torch.float32, device)
    w1, w2, bias = _factors("spatial", 3, 2, 2, (3, 3), torch.float32, device)
    residual = torch.zeros(1, 3, 5, 5, device=device)
    residual[0, 1, 2, 3] = float("nan")
    out = ops.factored_conv2d(x, w1, w2, bias, 1, 1, 1, "spatial", "relu", residual=residual)
    assert torch.isnan(out[0, 1, 2, 3]) and torch.isnan(out).sum() == 1


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("kind", ["contiguous", "channels_last", "per_channel"])
def test_opcheck_with_residual(device, scheme, kind, one_thread):
    x = _input((2, 6, 7, 8), torch.float32, device)
    w1, w2, bias = _factors(scheme, 5, 6, 3, (3, 3), torch.float32, device)
    residual = _residual((2, 5, 4, 8), kind, torch.float32, device)
    args = (x, w1, w2, bias, [2, 1], [1, 1], [1, 1], scheme, "relu", residual)
    torch.library.opcheck(torch.ops.trp_ext.factored_conv2d, args)


@pytest.mark.parametrize("scheme", ref.SCHEMES)
def test_opcheck_with_residual_grad(scheme, one_thread):
    x = _input((2, 3, 7, 8)).requires_grad_()
    w1, w2, bias = (t.requires_grad_() for t in _factors(scheme, 4, 3, 2, (3, 3)))
    residual = _input((2, 4, 4, 8), seed=5).requires_grad_()
    args = (x, w1, w2, bias, [2, 1], [1, 1], [1, 1], scheme, "relu", residual)
    torch.library.opcheck(torch.ops.trp_ext.factored_conv2d, args)


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("residual_shape", [(2, 3, 6, 5), (3, 1, 1), (1, 1, 6, 1)])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_gradcheck_with_residual(scheme, residual_shape, activation, one_thread):
    x = _input((2, 2, 6, 5)).requires_grad_()
    w1, w2, bias = (t.requires_grad_() for t in _factors(scheme, 3, 2, 2, (3, 3), seed=3))
    residual = _input(residual_shape, seed=4).requires_grad_()
    fn = lambda *a: ops.factored_conv2d(*a[:4], 1, 1, 1, scheme, activation, residual=a[4])  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w1, w2, bias, residual))


def test_meta_shape_with_residual():
    x = torch.empty(2, 6, 11, 13, device="meta")
    w1, w2 = torch.empty(4, 6, 3, 3, device="meta"), torch.empty(5, 4, 1, 1, device="meta")
    out = torch.ops.trp_ext.factored_conv2d(x, w1, w2, None, [2, 2], [1, 1], [1, 1], "channel", "relu",
                                            torch.empty(5, 1, 1, device="meta"))
    assert out.shape == (2, 5, 6, 7)
    with pytest.raises(ValueError, match="argument 'residual' must broadcast to the output shape"):
        torch.ops.trp_ext.factored_conv2d(x, w1, w2, None, [2, 2], [1, 1], [1, 1], "channel", "relu",
                                          torch.empty(2, 5, 6, 6, device="meta"))


@pytest.mark.parametrize(
    "residual,error,message",
    [
        (lambda out: out[..., :-1], ValueError,
         r"argument 'residual' must broadcast to the output shape \[2, 5, 9, 9\], got shape \[2, 5, 9, 8\]"),
        (lambda out: out.unsqueeze(0), ValueError, "argument 'residual' must broadcast to the output shape"),
        (lambda out: out[:, :2], ValueError, "argument 'residual' must broadcast to the output shape"),
        (lambda out: out.double(), TypeError, "argument 'residual' must have x's dtype"),
    ],
)
def test_bad_residual_names_the_argument(device, residual, error, message):
    x = _input((2, 4, 9, 9), torch.float32, device)
    w1, w2, bias = _factors("channel", 5, 4, 3, (3, 3), torch.float32, device)
    out = torch.zeros(2, 5, 9, 9, device=device)
    with pytest.raises(error, match=message):
        torch.ops.trp_ext.factored_conv2d(x, w1, w2, bias, [1, 1], [1, 1], [1, 1], "channel", None, residual(out))


@pytest.mark.cuda
def test_residual_device_mismatch_names_the_argument():
    x = _input((2, 4, 9, 9), torch.float32, "cuda")
    w1, w2, bias = _factors("channel", 5, 4, 3, (3, 3), torch.float32, "cuda")
    with pytest.raises(ValueError, match="argument 'residual' must be on cuda"):
        torch.ops.trp_ext.factored_conv2d(x, w1, w2, bias, [1, 1], [1, 1], [1, 1], "channel", None,
                                          torch.zeros(2, 5, 9, 9))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("kind", ["contiguous", "channels_last", "per_channel"])
def test_cuda_residual_error_at_most_twice_torch(dtype, kind):
    """A residual laid out as the output runs fused, any other unfused; either way the error
    against a float64 reference is at most twice that of the PyTorch composition in the same
    dtype (flash-attention's rule, as for the op without a residual)."""
    x = _input((4, 16, 12, 12), torch.float64, "cuda").contiguous(memory_format=torch.channels_last)
    w1, w2, bias = _factors("channel", 16, 16, 6, (3, 3), torch.float64, "cuda")
    residual = _residual((4, 16, 12, 12), kind, torch.float64, "cuda")
    args = (1, 1, 1, "channel", "relu")
    expected = ref.factored_conv2d(x, w1, w2, bias, *args, residual=residual)
    low = [t.to(dtype) for t in (x, w1, w2, bias, residual)]
    ours = ops.factored_conv2d(*low[:4], *args, residual=low[4])
    torch_low = ref.factored_conv2d(*low[:4], *args, residual=low[4])
    assert ours.dtype == dtype and ours.is_contiguous(memory_format=torch.channels_last)
    err_ours = (ours.double() - expected).abs().max().item()
    err_torch = (torch_low.double() - expected).abs().max().item()
    assert err_ours <= 2 * err_torch + 1e-6, (err_ours, err_torch)


def test_module_takes_a_residual():
    from trp_ext.nn import FactoredConv2d

    torch.manual_seed(0)
    layer = FactoredConv2d(4, 6, 2, 3, padding=1, activation="relu").double()
    x, shortcut = _input((2, 4, 7, 5)), _input((2, 6, 7, 5), seed=3)
    expected = torch.relu(ref.factored_conv2d(x, layer.weight1, layer.weight2, layer.bias, 1, 1, 1, "channel")
                          + shortcut)
    torch.testing.assert_close(layer(x, residual=shortcut), expected)


@pytest.fixture
def threads(request):
    """The parametrized thread count for the test's duration."""
    previous = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(previous)


@pytest.mark.parametrize("winograd", ["never", "always"])
@pytest.mark.parametrize("threads", [1, 2, 3], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("residual_kind", [None, "contiguous", "image", "per_pixel"])
@pytest.mark.parametrize("batch,size,stride", [
    (1, (7, 7), 1),    # 49 positions a band: whole vectors and a tail of 1
    (2, (9, 13), 1),   # odd rows of 13 (Winograd: the last tile column half past each row)
    (3, (16, 16), 1),  # whole vectors only
    (2, (10, 6), 1),   # Winograd: rows of 6, 10 image rows
    (1, (9, 12), 1),   # Winograd: the last tile row holds one image row
    (9, (7, 7), 1),    # Winograd: several 7x7 images an item, each tiles' last row on the next
    (1, (3, 2), 1),    # under one vector: the copy path
    (2, (11, 9), 2),   # stride 2 (never Winograd): 6 x 5 outputs
])
def test_channel_scheme_into_nchw_is_bit_identical_to_the_copy_path(winograd, threads, dtype, residual_kind, batch,
                                                                    size, stride):
    """An NCHW output takes the channel scheme's direct path (the 1x1 conv writes the output,
    residual and ReLU included, from its registers), in the direct and the Winograd kernels; a
    channels_last one the copy path. Both run the same sums, so they must agree exactly, and
    with the reference."""
    x = _input((batch, 6, *size), dtype)
    w1, w2, bias = _factors("channel", 7, 6, 3, (3, 3), dtype)
    out_shape = _output_shape(x, w1, w2, (stride, stride), (1, 1), (1, 1), "channel")
    residual = None if residual_kind is None else _residual(out_shape, residual_kind, dtype, "cpu", seed=5)
    args = (w1, w2, bias, stride, 1, 1, "channel", "relu")
    with ops.cpu_winograd(winograd):
        direct = ops.factored_conv2d(x, *args, residual=residual)
        copied = ops.factored_conv2d(x.contiguous(memory_format=torch.channels_last), *args, residual=residual)
    assert direct.is_contiguous() and copied.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(direct, copied.contiguous())
    _check(x, w1, w2, bias, residual, (stride, stride), (1, 1), (1, 1), "channel", "relu")


@pytest.mark.parametrize("threads", [1, 2, 3], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("residual_kind", [None, "contiguous", "image", "per_pixel"])
@pytest.mark.parametrize("batch,size,kw,padding,dilation,stride,channels", [
    # The direct path at 1, 2 and 3 threads (their bands differ):
    (1, (12, 14), 3, 1, 1, 1, 5),    # the unshifted column written by the first conv in place
    (1, (12, 11), 5, 2, 1, 1, 5),    # odd rows of 11, shifts -2 .. 2
    (2, (12, 16), 3, 0, 1, 1, 5),    # rows of 14 from 16: every column gathered, none in place
    (2, (12, 12), 3, 2, 2, 1, 5),    # dilated: shifts -2, 0, 2
    (1, (30, 33), 3, 1, 1, 1, 40),   # several bands; two input-channel groups accumulate in place
    (2, (9, 16), 3, 1, 1, 2, 5),     # stride 2: rows of 8, copied from planes of rows of 9
    (1, (18, 20), 5, 2, 2, 3, 5),    # stride 3, dilated
    # The planes path either way:
    (1, (7, 15), 3, 1, 1, 2, 5),     # as many positions (8 a row) either way
    (1, (6, 5), 3, 3, 1, 1, 5),      # padding past the kernel: no column to save
    (1, (12, 13), 7, 3, 1, 1, 5),    # wider than kMaxDirectSpatialKernel
])
def test_spatial_scheme_into_nchw_is_bit_identical_to_the_copy_path(threads, dtype, residual_kind, batch, size, kw,
                                                                    padding, dilation, stride, channels):
    """Where it computes fewer positions, an NCHW output of the spatial scheme is written by its
    1 x kw conv in place, from the intermediate laid out as one array per kernel column in rows of
    the output's length (at stride 1 a shifted copy, zeros where a column reads padding; at
    larger strides copied from the stride-phase planes); a channels_last output always takes the
    copy path from the planes. Both run the same sums, so they must agree exactly, and with the
    reference. The cases are chosen so that the first seven take the direct path at every thread
    count here (the path is not observable from Python)."""
    x = _input((batch, channels, *size), dtype)
    w1, w2, bias = _factors("spatial", 7, channels, 3, (3, kw), dtype)
    stride, pad, dil = (1, stride), (1, padding), (1, dilation)
    out_shape = _output_shape(x, w1, w2, stride, pad, dil, "spatial")
    residual = None if residual_kind is None else _residual(out_shape, residual_kind, dtype, "cpu", seed=5)
    args = (w1, w2, bias, stride, pad, dil, "spatial", "relu")
    direct = ops.factored_conv2d(x, *args, residual=residual)
    copied = ops.factored_conv2d(x.contiguous(memory_format=torch.channels_last), *args, residual=residual)
    assert direct.is_contiguous() and copied.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(direct, copied.contiguous())
    _check(x, w1, w2, bias, residual, stride, pad, dil, "spatial", "relu")
