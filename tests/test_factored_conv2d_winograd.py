"""The CPU factored_conv2d's Winograd paths against the reference composition: F(2x2, 3x3) for
the channel scheme's 3x3 stride-1 first conv, F(2, 3) along each axis for the spatial scheme's
3x1 and 1x3 convs; and the mode that selects them."""
import pytest
import torch

from trp_ext import _C, ops
from trp_ext import _reference as ref
from test_factored_conv2d import CHANNELS, _check, _factors, _input, _layouts

TOL = {torch.float32: 2e-5, torch.float64: 1e-12}


@pytest.fixture
def always():
    with ops.cpu_winograd("always"):
        yield


# (batch, H, W): odd and even sizes, one tile, images smaller than a tile, several images per
# work item (small images, large batch), several bands per image, tile rows longer than one
# vector (64 / 2 + 1 tiles); with every padding the input allows.
SIZES = [(2, 13, 10), (1, 7, 7), (3, 14, 14), (1, 2, 2), (2, 1, 5), (64, 8, 8), (2, 61, 67)]
PADDINGS = [0, 1, 2, (0, 2)]
CASES = [(size, padding) for size in SIZES for padding in PADDINGS
         if size[1] + 2 * torch.nn.modules.utils._pair(padding)[0] >= 3
         and size[2] + 2 * torch.nn.modules.utils._pair(padding)[1] >= 3]


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("size,padding", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sizes_and_padding(always, scheme, size, padding, dtype):
    x = _input((size[0], 5, size[1], size[2]), dtype)
    w1, w2, bias = _factors(scheme, 6, 5, 4, (3, 3), dtype)
    got = ops.factored_conv2d(x, w1, w2, bias, 1, padding, 1, scheme, "relu")
    _check(got, x, w1, w2, bias, 1, padding, 1, scheme, "relu", tol=TOL[dtype])


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("c,r,n", CHANNELS + [(300, 20, 7)])  # 300: several channel groups
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias,activation", [(True, None), (True, "relu"), (False, None)])
def test_channels(always, scheme, c, r, n, dtype, bias, activation):
    x = _input((3, c, 13, 10), dtype)
    w1, w2, b = _factors(scheme, n, c, r, (3, 3), dtype)
    b = b if bias else None
    got = ops.factored_conv2d(x, w1, w2, b, 1, 1, 1, scheme, activation)
    _check(got, x, w1, w2, b, 1, 1, 1, scheme, activation, tol=TOL[dtype])


@pytest.mark.parametrize("switch,scheme,batch,rank,n", [
    ("cpu_winograd", "channel", 1, 520, 8), ("cpu_winograd", "spatial", 1, 1100, 1100),
    ("cpu_channel_vectorised", "channel", 2, 1030, 8)])
def test_large_layer(switch, scheme, batch, rank, n):
    """Weights laid out per call past the size a thread keeps between calls (16 MiB): the call's
    own buffer. Winograd's transformed weights (this path), and the channel-vectorised path's
    packed panels, which share that buffer."""
    x = _input((batch, 520, 6, 5), torch.float32)
    w1, w2, bias = _factors(scheme, n, 520, rank, (3, 3), torch.float32)
    with getattr(ops, switch)("always"):
        got = ops.factored_conv2d(x, w1, w2, bias, 1, 1, 1, scheme, "relu")
    _check(got, x, w1, w2, bias, 1, 1, 1, scheme, "relu", tol=2e-5)


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced", "permuted", "channels_last_sliced"])
def test_memory_layouts(always, scheme, layout):
    x = _layouts("cpu")[layout]
    w1, w2, bias = _factors(scheme, 7, 6, 4, (3, 3), torch.float32)
    got = ops.factored_conv2d(x, w1, w2, bias, 1, 1, 1, scheme, None)
    _check(got, x, w1, w2, bias, 1, 1, 1, scheme, None, tol=2e-5)
    assert got.is_contiguous(memory_format=torch._prims_common.suggest_memory_format(x))


@pytest.mark.parametrize("scheme", ref.SCHEMES)
def test_nan_stays_in_its_windows(always, scheme):
    """Winograd's transforms mix a tile's whole 4x4 patch (4 values along an axis), but each
    output still combines only the values of its own window: a NaN reaches exactly the outputs
    whose window holds it."""
    x = _input((1, 2, 6, 6), torch.float32)
    x[0, 0, 2, 3] = float("nan")
    w1, w2, bias = _factors(scheme, 3, 2, 2, (3, 3), torch.float32)
    got = ops.factored_conv2d(x, w1, w2, bias, 1, 1, 1, scheme, "relu")
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[1:4, 2:5] = True
    assert torch.equal(torch.isnan(got[0]), expected.expand(3, 6, 6))


@pytest.mark.parametrize("scheme", ref.SCHEMES)
def test_inf_stays_in_its_windows(always, scheme):
    """An Inf reaches the same outputs as in the direct conv (as NaN or +-Inf: Inf - Inf inside
    the transforms is NaN)."""
    x = _input((1, 2, 7, 6), torch.float32)
    x[0, 1, 3, 2] = float("inf")
    x[0, 0, 5, 5] = float("-inf")
    w1, w2, bias = _factors(scheme, 3, 2, 2, (3, 3), torch.float32)
    got = ops.factored_conv2d(x, w1, w2, bias, 1, 1, 1, scheme, None)
    with ops.cpu_winograd("never"):
        direct = ops.factored_conv2d(x, w1, w2, bias, 1, 1, 1, scheme, None)
    assert torch.equal(torch.isfinite(got), torch.isfinite(direct))
    assert not torch.isfinite(direct).all()


def test_wide_images_take_the_direct_path(always):
    """Rows wider than the transform's row buffer (1024 values) run the direct kernel even under
    "always": bit for bit the "never" result."""
    x = _input((1, 2, 3, 1000), torch.float32)
    w1, w2, bias = _factors("channel", 3, 2, 2, (3, 3), torch.float32)
    got = ops.factored_conv2d(x, w1, w2, bias, 1, 1, 1, "channel", "relu")
    with ops.cpu_winograd("never"):
        assert torch.equal(got, ops.factored_conv2d(x, w1, w2, bias, 1, 1, 1, "channel", "relu"))
    _check(got, x, w1, w2, bias, 1, 1, 1, "channel", "relu", tol=2e-5)


@pytest.mark.parametrize("scheme", ref.SCHEMES)
def test_opcheck(always, scheme):
    x = _layouts("cpu")["channels_last"]
    w1, w2, bias = _factors(scheme, 5, 6, 3, (3, 3), torch.float32)
    torch.library.opcheck(torch.ops.trp_ext.factored_conv2d,
                          (x, w1, w2, bias, [1, 1], [1, 1], [1, 1], scheme, "relu"))


@pytest.mark.parametrize("scheme,shape,r,private", [
    ("channel", (4, 32, 16, 16), 16, True),  # 32-64 KiB of transformed weights: a copy per thread
    ("channel", (2, 520, 8, 8), 260, False),  # 8.3-16.5 MiB: two copies would pass 16 MiB, one shared
    ("spatial", (4, 32, 16, 16), 16, True),  # 10-20 KiB
    ("spatial", (2, 1100, 8, 8), 600, False),  # 10.6-21.2 MiB
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_transformed_weights_per_thread_or_shared(always, scheme, shape, r, private, dtype):
    """With several threads running items, each transforms the weights into its own buffer
    where the copies stay within 16 MiB, else they share one. Either way, at 1-4 threads the
    result is bit for bit one thread's, and the reference's; the library counts the calls
    that made copies. A second call reuses the threads' buffers and must refill them: here
    with other weights."""
    x = _input(shape, dtype)
    c = shape[1]
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        factors = [_factors(scheme, 6, c, r, (3, 3), dtype, seed=seed) for seed in (0, 1)]
        one_thread = [ops.factored_conv2d(x, *f, 1, 1, 1, scheme, "relu") for f in factors]
        for threads in (2, 3, 4):
            torch.set_num_threads(threads)
            for (w1, w2, bias), expected in zip(factors, one_thread):
                before = _C.cpu_winograd_private_weight_calls()
                got = ops.factored_conv2d(x, w1, w2, bias, 1, 1, 1, scheme, "relu")
                assert (_C.cpu_winograd_private_weight_calls() > before) == private, threads
                assert torch.equal(got, expected), threads
        _check(one_thread[1], x, *factors[1], 1, 1, 1, scheme, "relu", tol=TOL[dtype])
        torch.set_num_threads(1)
        before = _C.cpu_winograd_private_weight_calls()
        ops.factored_conv2d(x, *factors[0], 1, 1, 1, scheme, "relu")
        assert _C.cpu_winograd_private_weight_calls() == before  # one thread: nothing to share
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(params=["narrow", "wide"])
def vector_width(request):
    """The Winograd rules differ with the width of the direct kernel's multiply-add loops
    (ops.cpu_wide_vectors): each width's rule is checked where this CPU can run it."""
    wide = request.param == "wide"
    if wide and _C.cpu_kernels() != "avx512":
        pytest.skip("this CPU's kernels have no 512-bit build")
    with ops.cpu_wide_vectors("always" if wide else "never"):
        assert _C.cpu_vector_bits() == (512 if wide else 256)
        yield request.param


def test_auto_mode_picks_winograd_only_for_large_layers(vector_width):
    """auto gives bit for bit the result of always on a layer past the thresholds, and that of
    never below them or off the 3x3 stride-1 geometry. 256-bit loops: rank 16, 32 channels, 128
    tiles; 48 tiles from rank 32. 512-bit loops: rank 32, 32 channels, 128 tiles."""
    def run(mode, x, w1, w2, bias, stride):
        with ops.cpu_winograd(mode):
            return ops.factored_conv2d(x, w1, w2, bias, stride, 1, 1, "channel", "relu")

    x = _input((2, 32, 16, 16), torch.float32)  # 2 x 8 x 8 = 128 tiles
    large = _factors("channel", 8, 32, 16, (3, 3), torch.float32)
    small_rank = _factors("channel", 8, 32, 15, (3, 3), torch.float32)
    few_channels = _factors("channel", 8, 31, 16, (3, 3), torch.float32)
    rank_32 = _factors("channel", 8, 32, 32, (3, 3), torch.float32)
    rank_31 = _factors("channel", 8, 32, 31, (3, 3), torch.float32)
    row_of_48 = _input((1, 32, 2, 96), torch.float32)  # one tile row: 48 tiles
    row_of_47 = _input((1, 32, 2, 94), torch.float32)
    row_of_127 = _input((1, 32, 2, 254), torch.float32)
    if vector_width == "narrow":
        cases = [(x, large, 1, "always"), (x, large, 2, "never"), (x, small_rank, 1, "never"),
                 (x[:, :31], few_channels, 1, "never"),
                 (x[:1], large, 1, "never"),  # 64 tiles at rank 16
                 (x[:1], rank_32, 1, "always"),  # and at rank 32
                 (x[:1], rank_31, 1, "never"),
                 (row_of_48, rank_32, 1, "always"),
                 (row_of_47, rank_32, 1, "never")]
    else:
        few_channels = _factors("channel", 8, 31, 32, (3, 3), torch.float32)
        cases = [(x, rank_32, 1, "always"), (x, rank_32, 2, "never"), (x, rank_31, 1, "never"),
                 (x, large, 1, "never"),  # rank 16 with 128 tiles
                 (x[:, :31], few_channels, 1, "never"),
                 (x[:1], rank_32, 1, "never"),  # 64 tiles
                 (row_of_127, rank_32, 1, "never")]
    for x_, (w1, w2, bias), stride, same_as in cases:
        auto = run("auto", x_, w1, w2, bias, stride)
        assert torch.equal(auto, run(same_as, x_, w1, w2, bias, stride)), (x_.shape, w1.shape, stride)
    for x_, (w1, w2, bias) in ((x, large), (x, rank_32), (row_of_48, rank_32), (row_of_47, rank_32),
                               (row_of_127, rank_32)):
        assert not torch.equal(run("always", x_, w1, w2, bias, 1), run("never", x_, w1, w2, bias, 1))


def test_auto_mode_picks_spatial_winograd_only_for_large_layers(vector_width):
    """The spatial scheme's rule: auto gives bit for bit the result of always past the
    thresholds, and that of never below any of them or off the 3x3 stride-1 geometry. 256-bit
    loops: rank 16, 32 input channels and 1024 first-conv positions (batch x ceil(out_h / 2) x W),
    or 128 from rank 32 on. 512-bit loops: rank 32, 32 input channels, 128 positions."""
    def run(mode, x, w1, w2, bias, stride):
        with ops.cpu_winograd(mode):
            return ops.factored_conv2d(x, w1, w2, bias, stride, 1, 1, "spatial", "relu")

    x = _input((1, 32, 16, 16), torch.float32)  # 8 tile rows x 16 columns = 128 positions
    short = _input((1, 32, 14, 16), torch.float32)  # 7 x 16 = 112
    many = _input((8, 32, 16, 16), torch.float32)  # 1024
    fewer = _input((8, 32, 14, 16), torch.float32)  # 896
    rank_32 = _factors("spatial", 8, 32, 32, (3, 3), torch.float32)
    rank_31 = _factors("spatial", 8, 32, 31, (3, 3), torch.float32)
    rank_16 = _factors("spatial", 8, 32, 16, (3, 3), torch.float32)
    rank_15 = _factors("spatial", 8, 32, 15, (3, 3), torch.float32)
    few_channels = _factors("spatial", 8, 31, 32, (3, 3), torch.float32)
    cases = [(x, rank_32, 1, "always"), (x, rank_32, 2, "never"), (short, rank_32, 1, "never"),
             (x[:, :31], few_channels, 1, "never"), (x, rank_16, 1, "never"),
             (fewer, rank_16, 1, "never"), (many, rank_15, 1, "never")]
    if vector_width == "narrow":
        cases += [(many, rank_16, 1, "always")]
    else:
        cases += [(many, rank_16, 1, "never"), (many, rank_31, 1, "never")]
    for x_, (w1, w2, bias), stride, same_as in cases:
        auto = run("auto", x_, w1, w2, bias, stride)
        assert torch.equal(auto, run(same_as, x_, w1, w2, bias, stride)), (x_.shape, w1.shape, stride)
    for x_, factors in ((x, rank_32), (short, rank_32), (many, rank_16), (fewer, rank_16), (many, rank_31)):
        assert not torch.equal(run("always", x_, *factors, 1), run("never", x_, *factors, 1))


@pytest.mark.parametrize("switch", ["cpu_winograd", "cpu_channel_vectorised", "cpu_split_images", "cpu_wide_vectors",
                                    "cpu_batched_projection", "cuda_pipelined_loads", "cuda_batched_eigh"])
def test_mode_is_restored_and_checked(switch):
    """Every path switch (this one, the channel-vectorised path's, the split images', the CPU
    projection's batched algorithm, the CUDA kernels' pipelined loads and batched eigensolver,
    which CPU-only builds have too): the
    context manager restores the previous mode, also on an exception, and bad modes raise naming
    the switch."""
    context, mode = getattr(ops, switch), getattr(ops, f"{switch}_mode")
    assert mode() == "auto"
    with context("never"):
        assert mode() == "never"
        with pytest.raises(RuntimeError):
            with context("always"):
                raise RuntimeError("inside")
        assert mode() == "never"
    assert mode() == "auto"
    with pytest.raises(ValueError, match=f"{switch}\\(\\): mode must be one of"):
        with context("fast"):
            pass
    from trp_ext import _C
    with pytest.raises(ValueError, match=f"{switch}\\(\\): mode must be"):
        getattr(_C, switch)("fast")
    with pytest.raises(TypeError):
        getattr(_C, switch)(3)
    assert getattr(_C, switch)(mode="auto") == "auto"
