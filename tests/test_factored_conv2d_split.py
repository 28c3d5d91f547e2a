"""The CPU band path with its images split across threads by channels (each thread a share of
the intermediate's rows, then of the output's channels) against the reference composition and,
bit for bit, against the same path in bands; and the mode that selects it (layouts, residuals,
opcheck and gradcheck with every forced path, in test_factored_conv2d_forced_paths.py)."""
import threading

import pytest
import torch

from trp_ext import _reference as ref
from trp_ext import ops
from test_factored_conv2d import CHANNELS, GEOMETRY, _check, _factors, _input

TOL = {torch.float32: 2e-5, torch.float64: 1e-12}


@pytest.fixture
def band_path():
    """The band path for every call (the other CPU paths off), images in bands unless a test
    splits them."""
    with ops.cpu_winograd("never"), ops.cpu_channel_vectorised("never"):
        yield


@pytest.fixture
def always(band_path):
    with ops.cpu_split_images("always"):
        yield


@pytest.fixture(params=[1, 2, 3, 4])
def threads(request):
    """Two parts on one thread (run one after the other), and as many parts as threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(previous)


def _split_and_banded(*args):
    with ops.cpu_split_images("always"):
        split = ops.factored_conv2d(*args)
    with ops.cpu_split_images("never"):
        banded = ops.factored_conv2d(*args)
    return split, banded


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("kernel,stride,padding,dilation", GEOMETRY)
def test_geometry_matches_reference(band_path, threads, scheme, kernel, stride, padding, dilation):
    """Every stride/padding/dilation/kernel combination of the main tests, odd H and W: the
    split image gives the banded result bit for bit (each value is the same sum, in the same
    order), and both the reference's."""
    x = _input((2, 3, 11, 9))
    w1, w2, bias = _factors(scheme, 5, 3, 4, kernel)
    split, banded = _split_and_banded(x, w1, w2, bias, stride, padding, dilation, scheme, "relu")
    assert torch.equal(split, banded)
    _check(split, x, w1, w2, bias, stride, padding, dilation, scheme, "relu", tol=1e-12)


# Ranks and output channels that split into parts of one row, of no rows (rank 1 or 2 on three
# threads), and of several register blocks.
SPLIT_CHANNELS = CHANNELS + [(4, 2, 3), (6, 40, 50)]


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("c,r,n", SPLIT_CHANNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias,activation", [(True, None), (True, "relu"), (False, None)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_channels_match_reference(always, threads, scheme, c, r, n, dtype, bias, activation,
                                  channels_last):
    """Into NCHW outputs (written in place) and channels_last ones (copied out)."""
    x = _input((1, c, 7, 9), dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w1, w2, b = _factors(scheme, n, c, r, (3, 3), dtype)
    b = b if bias else None
    got = ops.factored_conv2d(x, w1, w2, b, 1, 1, 1, scheme, activation)
    _check(got, x, w1, w2, b, 1, 1, 1, scheme, activation, tol=TOL[dtype])


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("kernel,stride,padding", [((3, 3), 1, 1), ((3, 3), 2, 1), ((1, 7), 1, (0, 3)),
                                                    ((5, 5), 2, 2), ((3, 7), (1, 2), (1, 3)),
                                                    ((3, 5), 3, (1, 2))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_second_conv_inputs(band_path, threads, scheme, kernel, stride, padding, dtype):
    """Every way the second conv reads the intermediate: compacted (channel scheme), gathered
    per kernel column at stride 1 (one written by the first conv in place) and at stride 2
    (through the intermediate's planes), and its planes (spatial kernels wider than 5), into
    NCHW and channels_last outputs (written in place, or copied out)."""
    for x in (_input((1, 5, 9, 13), dtype),
              _input((1, 5, 9, 13), dtype).contiguous(memory_format=torch.channels_last)):
        w1, w2, bias = _factors(scheme, 6, 5, 7, kernel, dtype)
        split, banded = _split_and_banded(x, w1, w2, bias, stride, padding, 1, scheme, "relu")
        assert torch.equal(split, banded)
        _check(split, x, w1, w2, bias, stride, padding, 1, scheme, "relu", tol=TOL[dtype])


@pytest.mark.parametrize("scheme", ref.SCHEMES)
def test_nan_stays_in_its_windows(band_path, scheme):
    """A NaN reaches exactly the outputs whose window holds it, as in bands."""
    x = _input((1, 3, 8, 7), torch.float32)
    w1, w2, bias = _factors(scheme, 10, 3, 4, (3, 3), torch.float32)
    for position in ((0, 0), (3, 4), (7, 6)):
        y = x.clone()
        y[0, 2, position[0], position[1]] = float("nan")
        split, banded = _split_and_banded(y, w1, w2, bias, 1, 1, 1, scheme, "relu")
        assert torch.isnan(banded).any()
        assert torch.equal(torch.isnan(split), torch.isnan(banded))
        torch.testing.assert_close(split, banded, equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("stride,padding", [(1, (1, 2)), (2, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("kernel", [(3, 3), (3, 7)])
def test_shared_buffers_start_clean(band_path, threads, scheme, stride, padding, channels_last, kernel):
    """The parts share the calling thread's retained buffer, which other paths fill too: every
    part zeroes the padding of its share on every call. Here a Winograd call with NaN weights
    first fills that buffer with NaN; the split call must not read any of it."""
    with ops.cpu_winograd("always"):
        x = _input((2, 32, 16, 16), torch.float32)
        w1, w2, bias = _factors("channel", 8, 32, 16, (3, 3), torch.float32)
        w1.fill_(float("nan"))
        assert torch.isnan(ops.factored_conv2d(x, w1, w2, bias, 1, 1, 1, "channel", None)).all()
    x = _input((1, 5, 9, 13), torch.float32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    # Spatial kw 3 into NCHW: gathered arrays (at stride 1 padding columns stay zero); kw 7, or
    # channels_last: the intermediate's planes.
    w1, w2, bias = _factors(scheme, 6, 5, 7, kernel, torch.float32)
    with ops.cpu_split_images("always"):
        got = ops.factored_conv2d(x, w1, w2, bias, stride, padding, 1, scheme, "relu")
    _check(got, x, w1, w2, bias, stride, padding, 1, scheme, "relu", tol=2e-5)


def test_auto_mode_splits_only_uneven_bands():
    """At 2 threads, auto splits a batch-1 image with a 7-row output (bands of 4 + 3 rows), not
    one with 14 rows (7 + 7), nor a batch of 2 (an image per thread), nor a layer too small to
    share (whose bands run on one thread), nor one whose planes (built whole by each part) are
    too large, nor any on three threads. The results are the same bit for bit either way: the library's count of split
    calls tells."""
    from trp_ext import _C
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with ops.cpu_winograd("never"), ops.cpu_channel_vectorised("never"):
            cases = [((1, 256, 7, 7), 64, True), ((1, 256, 14, 14), 64, False),
                     ((2, 256, 7, 7), 64, False), ((1, 16, 7, 7), 8, False),
                     ((1, 2048, 7, 7), 64, False)]  # 2048 planes of 9 x 9 (+ gaps): 730 KiB
            for shape, rank, splits in cases:
                x = _input(shape, torch.float32)
                w1, w2, bias = _factors("channel", 256, shape[1], rank, (3, 3), torch.float32)
                before = _C.cpu_split_image_calls()
                ops.factored_conv2d(x, w1, w2, bias, 1, 1, 1, "channel", "relu")
                assert (_C.cpu_split_image_calls() > before) == splits, shape
            torch.set_num_threads(3)  # measured on two threads only: more stay in bands
            x = _input((1, 256, 7, 7), torch.float32)
            w1, w2, bias = _factors("channel", 256, 256, 64, (3, 3), torch.float32)
            before = _C.cpu_split_image_calls()
            ops.factored_conv2d(x, w1, w2, bias, 1, 1, 1, "channel", "relu")
            assert _C.cpu_split_image_calls() == before
    finally:
        torch.set_num_threads(previous)


def test_auto_mode_keeps_its_plan_while_it_looks_up_another(band_path):
    """auto looks up two plans for a batch-1 call at 2 threads (the bands', then a split's to
    compare them), in the calling thread's plan cache: the second lookup grows that cache (here,
    a fresh thread's: from one entry to two, which moves the first), and must not pull the
    first plan from under the call (it did: the output was left unwritten). Then more
    geometries than the cache holds (16), twice, each against the reference."""
    failures = []

    def calls():
        try:
            torch.set_num_threads(2)  # OpenMP's thread count is per calling thread
            for size in [14] + list(range(5, 45)) * 2:  # 14: rows 7 + 7, not split
                x = _input((1, 6, size, size + 1), torch.float32)
                w1, w2, bias = _factors("channel", 9, 6, 4, (3, 3), torch.float32)
                got = ops.factored_conv2d(x, w1, w2, bias, 1, 1, 1, "channel", "relu")
                _check(got, x, w1, w2, bias, 1, 1, 1, "channel", "relu", tol=2e-5)
        except Exception as error:  # noqa: BLE001  (reported by the test's own thread)
            failures.append(error)

    thread = threading.Thread(target=calls)
    thread.start()
    thread.join()
    assert not failures, failures[0]
