"""factored_conv2d against the reference composition, opcheck, gradcheck, and bad input."""
import itertools
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch._subclasses import FakeTensorMode

import trp_ext
from trp_ext import _reference as ref
from trp_ext import ops

KERNELS = [(3, 3), (3, 1), (1, 3), (5, 3), (2, 4)]
STRIDES = [1, 2, (2, 1)]
PADDINGS = [0, 1, 2, (0, 2)]
DILATIONS = [1, 2, (1, 2)]
GEOMETRY = list(itertools.product(KERNELS, STRIDES, PADDINGS, DILATIONS))


def _factors(scheme, n, c, r, kernel, dtype=torch.float64, device="cpu", seed=0):
    """Random factors with the scheme's shapes, scaled so every output is O(1)."""
    gen = torch.Generator().manual_seed(seed)
    kh, kw = kernel
    if scheme == "channel":
        w1 = torch.randn(r, c, kh, kw, generator=gen, dtype=torch.float64) / (c * kh * kw) ** 0.5
        w2 = torch.randn(n, r, 1, 1, generator=gen, dtype=torch.float64) / r ** 0.5
    else:
        w1 = torch.randn(r, c, kh, 1, generator=gen, dtype=torch.float64) / (c * kh) ** 0.5
        w2 = torch.randn(n, r, 1, kw, generator=gen, dtype=torch.float64) / (r * kw) ** 0.5
    bias = torch.randn(n, generator=gen, dtype=torch.float64)
    return [t.to(dtype=dtype, device=device) for t in (w1, w2, bias)]


def _input(shape, dtype=torch.float64, device="cpu", seed=1):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x.to(dtype=dtype, device=device)


def _expected(x, w1, w2, bias, stride, padding, dilation, scheme, activation):
    """The reference composition in float64 on the CPU."""
    cpu64 = [t.detach().cpu().double() if t is not None else None for t in (x, w1, w2, bias)]
    return ref.factored_conv2d(*cpu64, stride, padding, dilation, scheme, activation)


@pytest.fixture
def one_thread():
    """gradcheck and opcheck make thousands of calls on tiny tensors: threads only add wake-ups
    (on a loaded machine, OpenMP barriers there cost milliseconds each)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _check(got, x, w1, w2, bias, stride, padding, dilation, scheme, activation, tol):
    expected = _expected(x, w1, w2, bias, stride, padding, dilation, scheme, activation)
    assert got.shape == expected.shape and got.dtype == x.dtype and got.device == x.device
    torch.testing.assert_close(got.cpu().double(), expected, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------- reference
@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("kernel,stride,padding,dilation", GEOMETRY)
def test_geometry_matches_reference(scheme, kernel, stride, padding, dilation):
    """Every stride/padding/dilation/kernel combination, odd H and W, float64 on the CPU."""
    x = _input((2, 3, 11, 9))
    w1, w2, bias = _factors(scheme, 5, 3, 4, kernel)
    index = GEOMETRY.index((kernel, stride, padding, dilation))
    use_bias, activation = index % 2 == 0, "relu" if index % 3 == 0 else None
    b = bias if use_bias else None
    got = ops.factored_conv2d(x, w1, w2, b, stride, padding, dilation, scheme, activation)
    _check(got, x, w1, w2, b, stride, padding, dilation, scheme, activation, tol=1e-12)


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize(
    "kernel,stride,padding,dilation,size",
    [((1, 1), (4, 4), (0, 0), (1, 1), (9, 9)),  # strides past the generic phase split
     ((5, 5), (5, 3), (2, 3), (1, 2), (12, 13)),
     ((11, 11), (2, 2), (5, 5), (1, 1), (23, 19)),  # kernel larger than half the input
     ((7, 7), (1, 1), (5, 5), (1, 1), (3, 3)),  # input smaller than the kernel
     ((1, 3), (2, 3), (0, 4), (2, 1), (1, 9))],  # one row
)
def test_unusual_geometry(device, scheme, kernel, stride, padding, dilation, size):
    x = _input((2, 3, *size), torch.float64, device)
    w1, w2, bias = _factors(scheme, 7, 3, 5, kernel, torch.float64, device)
    got = ops.factored_conv2d(x, w1, w2, bias, stride, padding, dilation, scheme, "relu")
    _check(got, x, w1, w2, bias, stride, padding, dilation, scheme, "relu", tol=1e-12)


# (c, r, n): r = 1; r > c; n != c; ranks and channel counts that split into uneven register
# blocks; the CIFAR shape.
CHANNELS = [(3, 1, 5), (2, 7, 3), (16, 6, 16), (8, 13, 24), (5, 12, 1)]


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("c,r,n", CHANNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_channels_match_reference(device, scheme, c, r, n, dtype, activation):
    x = _input((3, c, 13, 10), dtype, device)
    w1, w2, bias = _factors(scheme, n, c, r, (3, 3), dtype, device)
    got = ops.factored_conv2d(x, w1, w2, bias, (2, 1), 1, 1, scheme, activation)
    _check(got, x, w1, w2, bias, (2, 1), 1, 1, scheme, activation, tol=1e-12 if dtype == torch.float64 else 2e-5)


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("rows", range(1, 7))
def test_lone_vector_tails_match_reference(scheme, rows):
    """float32 bands whose position count ends in a lone vector (14x14, stride 2: 7 rows of 8,
    56 positions; spatial first stage 7 x 14 -> 104) finish in a three-vector block, split in two
    above four rows: every register-block height 1..6 of both convs (r = n = rows)."""
    x = _input((16, 5, 14, 14), torch.float32)
    w1, w2, bias = _factors(scheme, rows, 5, rows, (3, 3), torch.float32)
    got = ops.factored_conv2d(x, w1, w2, bias, 2, 1, 1, scheme, "relu")
    _check(got, x, w1, w2, bias, 2, 1, 1, scheme, "relu", tol=2e-5)


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("batch,size", [(1, (32, 32)), (1, (7, 7)), (64, (9, 15)), (2, (131, 9))])
@pytest.mark.parametrize("stride", [1, 2])
def test_batch_sizes(device, scheme, batch, size, stride):
    x = _input((batch, 16, *size), torch.float32, device)
    w1, w2, bias = _factors(scheme, 16, 16, 6, (3, 3), torch.float32, device)
    got = ops.factored_conv2d(x, w1, w2, bias, stride, 1, 1, scheme, "relu")
    _check(got, x, w1, w2, bias, stride, 1, 1, scheme, "relu", tol=2e-5)


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_many_input_channels(device, scheme, dtype):
    """Enough channels that the CPU kernel splits its first conv into channel groups."""
    x = _input((2, 300, 14, 13), dtype, device)
    w1, w2, bias = _factors(scheme, 9, 300, 7, (3, 3), dtype, device)
    got = ops.factored_conv2d(x, w1, w2, bias, 2, 1, 1, scheme, "relu")
    _check(got, x, w1, w2, bias, 2, 1, 1, scheme, "relu", tol=1e-12 if dtype == torch.float64 else 2e-5)


def _layouts(device):
    base = _input((4, 6, 11, 13), torch.float32, device)
    return {
        "contiguous": base,
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "sliced": _input((4, 6, 11, 26), torch.float32, device)[..., ::2],
        "permuted": base.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2),
        "channels_last_sliced": _input((4, 12, 11, 13), torch.float32, device)
        .contiguous(memory_format=torch.channels_last)[:, ::2],
    }


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced", "permuted", "channels_last_sliced"])
def test_memory_layouts(device, scheme, layout):
    x = _layouts(device)[layout]
    w1, w2, bias = _factors(scheme, 7, 6, 4, (3, 3), torch.float32, device)
    got = ops.factored_conv2d(x, w1, w2, bias, 2, 1, 1, scheme, None)
    _check(got, x, w1, w2, bias, 2, 1, 1, scheme, None, tol=2e-5)
    # The output follows the input's memory format, as torch's convs do.
    expected_format = torch._prims_common.suggest_memory_format(x)
    assert got.is_contiguous(memory_format=expected_format)


@pytest.mark.parametrize("scheme", ref.SCHEMES)
def test_weights_in_any_layout(device, scheme):
    """channels_last, sliced and expanded weights and bias (a converted or shared model's)."""
    x = _input((2, 5, 9, 11), torch.float32, device).contiguous(memory_format=torch.channels_last)
    w1, w2, bias = _factors(scheme, 6, 5, 3, (3, 3), torch.float32, device)
    w1 = w1.contiguous(memory_format=torch.channels_last)
    w2 = torch.cat([w2, w2], dim=1)[:, ::2]  # strided along r
    bias = torch.stack([bias, bias], dim=1)[:, 0]  # stride 2
    got = ops.factored_conv2d(x, w1, w2, bias, 1, 1, 1, scheme, "relu")
    _check(got, x, w1, w2, bias, 1, 1, 1, scheme, "relu", tol=2e-5)


@pytest.mark.parametrize("scheme", ref.SCHEMES)
def test_full_rank_split_reproduces_the_dense_conv(device, scheme):
    n, c = 8, 5
    weight = torch.randn(n, c, 3, 3, dtype=torch.float64)
    w1, w2 = ref.split_conv_weight(weight, scheme, min(ref.conv_weight_to_matrix(weight, scheme).shape))
    x = _input((2, c, 12, 9))
    bias = torch.randn(n, dtype=torch.float64)
    got = ops.factored_conv2d(x.to(device), w1.to(device), w2.to(device), bias.to(device), 2, 1, 1, scheme)
    expected = torch.nn.functional.conv2d(x, weight, bias, 2, 1, 1)
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-10, atol=1e-10)


def test_interleaved_geometries_match_reference():
    """The CPU kernel keeps its plans for recent geometries (batch and thread count included):
    more geometries than it keeps, each seen twice in turn, with other inputs the second time."""
    threads = torch.get_num_threads()
    cases = [(scheme, batch, size, stride) for scheme in ref.SCHEMES for batch in (1, 3)
             for size in ((9, 7), (12, 12), (5, 16)) for stride in (1, 2)]
    try:
        for seed in (0, 1):
            for i, (scheme, batch, size, stride) in enumerate(cases):
                torch.set_num_threads(1 + (i + seed) % 2)
                x = _input((batch, 3, *size), torch.float32, seed=seed + 10 * i)
                w1, w2, bias = _factors(scheme, 4, 3, 2, (3, 3), torch.float32, seed=seed)
                got = ops.factored_conv2d(x, w1, w2, bias, stride, 1, 1, scheme, "relu")
                _check(got, x, w1, w2, bias, stride, 1, 1, scheme, "relu", 2e-5)
    finally:
        torch.set_num_threads(threads)


def test_relu_keeps_nan(device):
    x = _input((1, 2, 5, 5), torch.float32, device)
    x[0, 0, 2, 2] = float("nan")
    w1, w2, bias = _factors("channel", 3, 2, 2, (3, 3), torch.float32, device)
    got = ops.factored_conv2d(x, w1, w2, bias, 1, 1, 1, "channel", "relu")
    assert torch.isnan(got[0, :, 1:4, 1:4]).all()  # every window that holds the NaN
    assert not torch.isnan(got[0, :, 0, :]).any()


def test_empty_batch(device):
    x = torch.zeros(0, 4, 6, 6, device=device)
    w1, w2, bias = _factors("channel", 3, 4, 2, (3, 3), torch.float32, device)
    assert ops.factored_conv2d(x, w1, w2, bias, 1, 1).shape == (0, 3, 6, 6)


# ATen's CPU capability -> the kernels ours run with (ATen's AVX512 implies AVX-512F and VL).
KERNELS_OF_CAPABILITY = {"AVX512": "avx512", "AVX2": "avx2", "DEFAULT": "portable"}


def test_cpu_kernels_follow_aten_capability():
    capability = torch.backends.cpu.get_cpu_capability()
    assert trp_ext._C.cpu_kernels() == KERNELS_OF_CAPABILITY.get(capability, "portable")


@pytest.mark.parametrize("capability", ["DEFAULT", "AVX2"])
def test_lower_capability_kernels_match_reference(capability):
    """ATEN_CPU_CAPABILITY=default switches off the AVX2 kernels, as it does ATen's own: in
    factored_conv2d and in lowrank_project's vector loops alike. ATEN_CPU_CAPABILITY=avx2 runs
    the AVX2 build of the factored_conv2d kernels (16 registers) on a CPU with AVX-512, whose
    own build (32 registers) the rest of this file checks there."""
    here = torch.backends.cpu.get_cpu_capability()
    # Any CPU runs the default build; ATen takes ATEN_CPU_CAPABILITY=avx2 without checking the
    # CPU, so its own AVX2 kernels need one that has it.
    if capability == "AVX2" and here not in ("AVX2", "AVX512"):
        pytest.skip(f"this CPU runs {here}, not AVX2")
    expected = KERNELS_OF_CAPABILITY[capability]
    script = (
        "import itertools, torch, trp_ext\n"
        "from trp_ext import ops, _reference as ref\n"
        f"assert trp_ext._C.cpu_kernels() == {expected!r}, trp_ext._C.cpu_kernels()\n"
        "g = torch.Generator().manual_seed(0)\n"
        "for scheme, (kh, kw) in (('channel', (3, 3)), ('spatial', (3, 3)), ('channel', (2, 5))):\n"
        "    x = torch.randn(2, 5, 13, 11, generator=g)\n"
        "    w1 = torch.randn(7, 5, kh, kw if scheme == 'channel' else 1, generator=g)\n"
        "    w2 = torch.randn(9, 7, 1, 1 if scheme == 'channel' else kw, generator=g)\n"
        "    b = torch.randn(9, generator=g)\n"
        "    for dtype in (torch.float32, torch.float64):\n"
        "        for stride in (1, 2, (2, 1)):\n"
        "            args = (b.to(dtype), stride, 1, (1, 2), scheme, 'relu')\n"
        "            got = ops.factored_conv2d(x.to(dtype), w1.to(dtype), w2.to(dtype), *args)\n"
        "            want = ref.factored_conv2d(x.double(), w1.double(), w2.double(), b.double(),\n"
        "                                       stride, 1, (1, 2), scheme, 'relu')\n"
        "            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)\n"
        "x, r = torch.randn(2, 5, 9, 7, generator=g), torch.randn(2, 6, 9, 7, generator=g)\n"
        "w1, w2 = torch.randn(4, 5, 3, 3, generator=g), torch.randn(6, 4, 1, 1, generator=g)\n"
        "for dtype in (torch.float32, torch.float64):  # a residual in the direct path's epilogue\n"
        "    got = ops.factored_conv2d(x.to(dtype), w1.to(dtype), w2.to(dtype), None, 1, 1, 1, 'channel',\n"
        "                              'relu', residual=r.to(dtype))\n"
        "    want = ref.factored_conv2d(x.double(), w1.double(), w2.double(), None, 1, 1, 1, 'channel', 'relu',\n"
        "                               residual=r.double())\n"
        "    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)\n"
        "with ops.cpu_winograd('always'):  # the Winograd transforms, both schemes, both layouts\n"
        "    for scheme, dtype, cl in itertools.product(('channel', 'spatial'), (torch.float32, torch.float64),\n"
        "                                               (False, True)):\n"
        "        x = torch.randn(3, 6, 13, 10, generator=g).to(dtype)\n"
        "        x = x.contiguous(memory_format=torch.channels_last) if cl else x\n"
        "        w1 = torch.randn(5, 6, 3, 3 if scheme == 'channel' else 1, generator=g).to(dtype)\n"
        "        w2 = torch.randn(4, 5, 1, 1 if scheme == 'channel' else 3, generator=g).to(dtype)\n"
        "        r = torch.randn(3, 4, 13, 10, generator=g).to(dtype)\n"
        "        got = ops.factored_conv2d(x, w1, w2, None, 1, 1, 1, scheme, 'relu', residual=r)\n"
        "        want = ref.factored_conv2d(x.double(), w1.double(), w2.double(), None, 1, 1, 1,\n"
        "                                   scheme, 'relu', residual=r.double())\n"
        "        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)\n"
        "with ops.cpu_channel_vectorised('always'):  # its blocks, tails and transposing epilogue\n"
        "    for scheme, dtype, size in itertools.product(('channel', 'spatial'), (torch.float32, torch.float64),\n"
        "                                                 ((7, 7), (3, 5), (1, 1))):\n"
        "        x = torch.randn(3, 6, *size, generator=g).to(dtype)\n"
        "        w1 = (torch.randn(35, 6, 3, 3 if scheme == 'channel' else 1, generator=g) / 7).to(dtype)\n"
        "        w2 = (torch.randn(17, 35, 1, 1 if scheme == 'channel' else 3, generator=g) / 10).to(dtype)\n"
        "        r = torch.randn(3, 17, *size, generator=g).to(dtype)\n"
        "        got = ops.factored_conv2d(x, w1, w2, None, 1, 1, 1, scheme, 'relu', residual=r)\n"
        "        want = ref.factored_conv2d(x.double(), w1.double(), w2.double(), None, 1, 1, 1,\n"
        "                                   scheme, 'relu', residual=r.double())\n"
        "        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)\n"
        "for shape in ((192, 192), (40, 300)):\n"
        "    q1, _ = torch.linalg.qr(torch.randn(shape[0], shape[0], generator=g, dtype=torch.float64))\n"
        "    q2, _ = torch.linalg.qr(torch.randn(shape[1], shape[0], generator=g, dtype=torch.float64))\n"
        "    s = torch.exp(-torch.arange(shape[0], dtype=torch.float64) / 20)\n"
        "    w = (q1 * s) @ q2.T\n"
        "    r = int(ref.energy_rank(s, 0.99))\n"
        "    got = ops.lowrank_project([w], 0.99)\n"
        "    assert int(got.ranks[0]) == r, (int(got.ranks[0]), r)\n"
        "    torch.testing.assert_close(got.projected[0], (q1[:, :r] * s[:r]) @ q2[:, :r].T, rtol=0, atol=1e-10)\n"
        "print('ok')\n"
    )
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability.lower())
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# ----------------------------------------------------------------------------- low precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("c,r,n,stride", [(16, 6, 16, 1), (64, 16, 128, 2), (24, 40, 20, 1)])
@pytest.mark.cuda
def test_low_precision_error_at_most_twice_torch(dtype, scheme, channels_last, c, r, n, stride):
    """flash-attention's rule: the error against a float64 reference is at most twice that of
    the PyTorch composition in the same dtype."""
    device = "cuda"
    x = _input((8, c, 17, 15), torch.float64, device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w1, w2, bias = _factors(scheme, n, c, r, (3, 3), torch.float64, device)
    args = (stride, 1, 1, scheme, "relu")
    expected = ref.factored_conv2d(x, w1, w2, bias, *args)
    low = [t.to(dtype) for t in (x, w1, w2, bias)]
    ours = ops.factored_conv2d(*low, *args)
    torch_low = ref.factored_conv2d(*low, *args)
    assert ours.dtype == dtype and ours.is_contiguous(memory_format=torch._prims_common.suggest_memory_format(low[0]))
    err_ours = (ours.double() - expected).abs().max().item()
    err_torch = (torch_low.double() - expected).abs().max().item()
    assert err_ours <= 2 * err_torch, (err_ours, err_torch)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("c,size,r,n", [(16, (8, 8), 6, 16), (64, (8, 8), 20, 64), (96, (13, 11), 40, 70),
                                        (512, (7, 7), 128, 512)])
def test_cuda_deep_reductions_on_few_tiles(dtype, scheme, channels_last, c, size, r, n):
    """Batch-1 layers with few output tiles: on sm_90 the kernel spreads each tile's first conv
    over a thread-block cluster (2 to 8 blocks, by the depth of the reduction) and sums the
    partial intermediates in distributed shared memory; the 13 x 11 spatial case also runs
    several stage-1 passes a tile, and the 16-channel spatial one (2 chunks deep) stays on one
    block. The result must not depend on that split."""
    device = "cuda"
    x = _input((1, c, *size), torch.float64, device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w1, w2, bias = _factors(scheme, n, c, r, (3, 3), torch.float64, device)
    _check_in_dtype(dtype, x, w1, w2, bias, (1, 1, 1, scheme, "relu"))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("c,r,n,batch,size", [(64, 16, 128, 4, (9, 11)), (32, 20, 40, 2, (8, 8)),
                                              (24, 8, 16, 3, (7, 5)), (512, 128, 512, 1, (7, 7))])
def test_cuda_channels_last_weights(dtype, scheme, c, r, n, batch, size):
    """Input and weights in channels_last, as a model converted with .to(memory_format=...) has
    them (the GPU benches' setting). The kernel then reads each run of 16 bytes of w1's
    reduction indices (channels of one tap) and of w2's rank index with one load where they are
    aligned; r = 20 leaves a partial run of w2 read element by element, and in fp16 24 channels
    are three runs per tap."""
    x, w1, w2, bias = _channels_last_operands(scheme, batch, c, size, r, n, (3, 3))
    _check_in_dtype(dtype, x, w1, w2, bias, (2, 1, 1, scheme, "relu"))


@pytest.mark.cuda
# Named ids: bench/gpu_check.sh selects the fp16 cases for compute-sanitizer by them.
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("c,r,n,batch,size,kernel,stride,padding", [
    (64, 16, 128, 4, (9, 11), (3, 3), 2, 1),  # stride 2, gathers in the padding
    (24, 20, 40, 3, (7, 5), (3, 3), 1, 2),  # fp16: three runs a tap; r = 20: a partial B block
    (512, 128, 512, 1, (7, 7), (3, 3), 1, 1),  # 144 chunks, on sm_90 spread over a cluster
    (16, 6, 16, 2, (6, 6), (1, 1), 1, 0),  # one chunk: fewer than the pipeline's stages
    (256, 64, 96, 2, (15, 13), (3, 3), 1, 1),  # spatial: several stage-1 passes a tile
])
def test_cuda_pipelined_loads_agree_with_single_buffered(dtype, scheme, c, r, n, batch, size, kernel, stride,
                                                         padding):
    """Input and weights in channels_last with 16-bit channels in runs of 8, where the kernel (on
    sm_80 or later) loads its first GEMM through the three-stage cp.async pipeline: the same
    products as the single-buffered loads, so the same output bit for bit, and within the
    low-precision rule of the reference."""
    x, w1, w2, bias = _channels_last_operands(scheme, batch, c, size, r, n, kernel)
    args = (stride, padding, 1, scheme, "relu")
    low = [t.to(dtype) for t in (x, w1, w2, bias)]
    with ops.cuda_pipelined_loads("never"):
        single = ops.factored_conv2d(*low, *args)
    with ops.cuda_pipelined_loads("auto"):
        pipelined = ops.factored_conv2d(*low, *args)
    assert torch.equal(pipelined, single)
    _check_in_dtype(dtype, x, w1, w2, bias, args)


def _channels_last_operands(scheme, batch, c, size, r, n, kernel):
    """float64 input and factors on the GPU, input and weights in channels_last, as a model
    converted with .to(memory_format=torch.channels_last) holds them."""
    x = _input((batch, c, *size), torch.float64, "cuda").contiguous(memory_format=torch.channels_last)
    w1, w2, bias = _factors(scheme, n, c, r, kernel, torch.float64, "cuda")
    w1, w2 = (w.contiguous(memory_format=torch.channels_last) for w in (w1, w2))
    return x, w1, w2, bias


def _check_in_dtype(dtype, x, w1, w2, bias, args):
    """The float64 operands cast to dtype (their layouts kept) through the op, against the float64
    reference: float32 within 1e-4, float16 and bfloat16 by flash-attention's rule (at most twice
    the error of the PyTorch composition in the same dtype)."""
    expected = ref.factored_conv2d(x, w1, w2, bias, *args)
    low = [t.to(dtype) for t in (x, w1, w2, bias)]
    ours = ops.factored_conv2d(*low, *args)
    assert ours.dtype == dtype and ours.shape == expected.shape
    if dtype == torch.float32:
        torch.testing.assert_close(ours.double(), expected, rtol=1e-4, atol=1e-4)
        return
    err_ours = (ours.double() - expected).abs().max().item()
    err_torch = (ref.factored_conv2d(*low, *args).double() - expected).abs().max().item()
    assert err_ours <= 2 * err_torch, (err_ours, err_torch)


@pytest.mark.cuda
def test_cuda_cluster_takes_a_deep_batch1_layer(tmp_path):
    """512-512 7x7 r128 at batch 1 is one output tile with a 144-chunk first conv. On sm_90 (with
    the extension built for it, as by default) a cluster of 8 blocks shares that tile: grid
    (8, 1, 1). Elsewhere 8 blocks split its output channels, each running the whole first conv:
    grid (1, 8, 1). Read from the profiler's trace, so that a silent fallback shows."""
    x = _input((1, 512, 7, 7), torch.float16, "cuda").contiguous(memory_format=torch.channels_last)
    w1, w2, bias = _factors("channel", 512, 512, 128, (3, 3), torch.float16, "cuda")
    ops.factored_conv2d(x, w1, w2, bias, 1, 1)  # warm-up: the shared-memory opt-in, the cluster query
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        ops.factored_conv2d(x, w1, w2, bias, 1, 1)
        torch.cuda.synchronize()
    trace = tmp_path / "trace.json"
    prof.export_chrome_trace(str(trace))
    events = json.loads(trace.read_text())["traceEvents"]
    if not any(e.get("cat") == "kernel" for e in events):
        # The call launches a kernel whatever path it takes, so an empty trace means the profiler
        # saw none: under compute-sanitizer, CUPTI refuses a second subscriber (seen on the H200).
        pytest.skip("the profiler recorded no kernels (CUPTI unavailable, e.g. under compute-sanitizer)")
    kernels = [e for e in events if e.get("cat") == "kernel" and "factored_conv2d_kernel" in e.get("name", "")]
    assert len(kernels) == 1, [e.get("name") for e in events if e.get("cat") == "kernel"]
    expected = [8, 1, 1] if torch.cuda.get_device_capability()[0] >= 9 else [1, 8, 1]
    assert list(kernels[0]["args"]["grid"]) == expected


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("scheme", ref.SCHEMES)
def test_cuda_falls_back_for_ranks_beyond_the_fast_path(dtype, scheme):
    """A rank too large for the fused kernel's shared memory still gives the right answer."""
    x = _input((2, 8, 9, 9), torch.float64, "cuda")
    w1, w2, bias = _factors(scheme, 6, 8, 300, (3, 3), torch.float64, "cuda")
    expected = ref.factored_conv2d(x, w1, w2, bias, 1, 1, 1, scheme, None)
    got = ops.factored_conv2d(*(t.to(dtype) for t in (x, w1, w2, bias)), 1, 1, 1, scheme)
    tol = {torch.float32: 1e-4, torch.float16: 5e-2, torch.bfloat16: 2e-1}[dtype]
    torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol)


@pytest.mark.cuda
def test_cuda_runs_on_the_current_stream():
    x = _input((4, 16, 16, 16), torch.float16, "cuda")
    w1, w2, bias = _factors("channel", 32, 16, 8, (3, 3), torch.float16, "cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = ops.factored_conv2d(x, w1, w2, bias, 1, 1)
    stream.synchronize()
    expected = ops.factored_conv2d(x, w1, w2, bias, 1, 1)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


# ----------------------------------------------------------------------------- op registration
def test_kernels_are_registered():
    assert torch._C._dispatch_has_kernel_for_dispatch_key("trp_ext::factored_conv2d", "CPU")
    if trp_ext.cuda_kernels_built():
        assert torch._C._dispatch_has_kernel_for_dispatch_key("trp_ext::factored_conv2d", "CUDA")


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck(device, scheme, layout, one_thread):
    x = _layouts(device)[layout]
    w1, w2, bias = _factors(scheme, 5, 6, 3, (3, 3), torch.float32, device)
    for args in ((bias, [2, 1], [1, 1], [1, 2], scheme, "relu"), (None, [1, 1], [0, 1], [1, 1], scheme, None)):
        torch.library.opcheck(torch.ops.trp_ext.factored_conv2d, (x, w1, w2, *args))


@pytest.mark.parametrize("scheme", ref.SCHEMES)
def test_opcheck_with_grad(scheme, one_thread):
    x = _input((2, 3, 7, 8)).requires_grad_()
    w1, w2, bias = (t.requires_grad_() for t in _factors(scheme, 4, 3, 2, (3, 3)))
    torch.library.opcheck(torch.ops.trp_ext.factored_conv2d, (x, w1, w2, bias, [2, 1], [1, 1], [1, 1], scheme, "relu"))


@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), ((2, 1), (0, 2), (1, 2))])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_gradcheck(scheme, stride, padding, dilation, activation, one_thread):
    x = _input((2, 2, 6, 5)).requires_grad_()
    w1, w2, bias = (t.requires_grad_() for t in _factors(scheme, 3, 2, 2, (3, 3), seed=3))
    fn = lambda *a: ops.factored_conv2d(*a, stride, padding, dilation, scheme, activation)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w1, w2, bias))


def test_gradients_of_some_inputs_only():
    x = _input((2, 3, 7, 6))
    w1, w2, bias = _factors("channel", 4, 3, 2, (3, 3))
    w2.requires_grad_()
    out = ops.factored_conv2d(x, w1, w2, bias, 1, 1, 1, "channel", "relu")
    out.sum().backward()
    w2_ref = w2.detach().clone().requires_grad_()
    ref.factored_conv2d(x, w1, w2_ref, bias, 1, 1, 1, "channel", "relu").sum().backward()
    torch.testing.assert_close(w2.grad, w2_ref.grad)


def test_no_grad_result_equals_autograd_result():
    x = _input((2, 3, 7, 6))
    w1, w2, bias = _factors("spatial", 4, 3, 2, (3, 3))
    with torch.no_grad():
        plain = ops.factored_conv2d(x, w1, w2, bias, 2, 1, 1, "spatial", "relu")
    tracked = ops.factored_conv2d(x, w1.requires_grad_(), w2, bias, 2, 1, 1, "spatial", "relu")
    assert plain.grad_fn is None and tracked.grad_fn is not None
    torch.testing.assert_close(plain, tracked.detach(), rtol=0, atol=0)


def test_meta_shapes_and_compile():
    x = torch.empty(2, 6, 11, 13, device="meta").contiguous(memory_format=torch.channels_last)
    w1, w2 = torch.empty(4, 6, 3, 1, device="meta"), torch.empty(5, 4, 1, 3, device="meta")
    out = torch.ops.trp_ext.factored_conv2d(x, w1, w2, None, [2, 1], [1, 1], [1, 2], "spatial", None)
    assert out.shape == (2, 5, 6, 11) and out.is_contiguous(memory_format=torch.channels_last)

    def layer(x, w1, w2, bias):
        return ops.factored_conv2d(x, w1, w2, bias, 1, 1, 1, "channel", "relu") * 2

    x = _input((2, 4, 9, 9), torch.float32)
    w1, w2, bias = _factors("channel", 5, 4, 3, (3, 3), torch.float32)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, w1, w2, bias), layer(x, w1, w2, bias))


@pytest.mark.parametrize("empty", ["rank", "in_channels", "out_channels"])
def test_backward_with_no_channels_somewhere(empty):
    # The forward took them; the backward failed inside aten's conv, which refuses zero channels.
    c, r, n = (0 if empty == "in_channels" else 3), (0 if empty == "rank" else 2), (0 if empty == "out_channels" else 4)
    x = torch.randn(2, c, 6, 6, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(r, c, 3, 3, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(n, r, 1, 1, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(n, dtype=torch.float64, requires_grad=True)
    ops.factored_conv2d(x, w1, w2, bias, 1, 1).sum().backward()
    # The output is the bias at every pixel (or empty); torch's own convs refuse these shapes.
    for tensor in (x, w1, w2):
        assert tensor.grad.shape == tensor.shape and not tensor.grad.any()
    torch.testing.assert_close(bias.grad, torch.full_like(bias, 2 * 6 * 6))


@pytest.mark.parametrize("scheme,size", [("channel", (0, 5)), ("spatial", (4, 0))])
def test_backward_of_an_input_of_padding_only(scheme, size):
    # The forward gives the bias at every pixel; the backward's aten convs refused the empty input.
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    w1, w2, bias = (t.requires_grad_() for t in _factors(scheme, 2, 3, 4, (1, 1), torch.float64))
    out = ops.factored_conv2d(x, w1, w2, bias, 1, 1, scheme=scheme)
    torch.testing.assert_close(out, bias.detach().view(1, -1, 1, 1).expand_as(out))
    out.sum().backward()
    for tensor in (x, w1, w2):
        assert tensor.grad.shape == tensor.shape and not tensor.grad.any()
    torch.testing.assert_close(bias.grad, torch.full_like(bias, out[:, 0].numel()))


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("empty", ["rank", "in_channels", "height"])
def test_empty_sums_far_past_the_image_run_unfused_to_the_bias(scheme, empty):
    """A stride and padding far past the image send the call to the unfused composition (its
    planes would be almost all zeros), whose library convs refused zero channels, a zero rank or
    an empty input; the output is relu(bias) at every pixel, as the fake kernel's shape says."""
    c, r = (0 if empty == "in_channels" else 3), (0 if empty == "rank" else 2)
    x = torch.randn(2, c, 0 if empty == "height" else 4, 4)
    w1, w2, bias = _factors(scheme, 5, c, r, (1, 1), torch.float32)
    stride, padding = (1000, 1000), (1000, 1000)
    out = _call(x, w1, w2, bias, stride, padding, scheme=scheme, activation="relu")
    with FakeTensorMode() as mode:
        fake = _call(*(mode.from_tensor(t) for t in (x, w1, w2, bias)), stride, padding, scheme=scheme,
                     activation="relu")
    assert out.shape == fake.shape and out.numel() > 0
    torch.testing.assert_close(out, torch.relu(bias).view(1, -1, 1, 1).expand_as(out))


def test_fake_kernel_refuses_the_dtypes_the_cpu_kernel_refuses():
    x, w1, w2, bias = (t.half() for t in _good("cpu"))
    with pytest.raises(TypeError, match="argument 'x' must be float32 or float64 on cpu, got"):
        _call(x, w1, w2, bias)
    with FakeTensorMode() as mode, pytest.raises(TypeError, match="argument 'x' must be float32 or float64 on cpu"):
        _call(*(mode.from_tensor(t) for t in (x, w1, w2, bias)))


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_forward_mode_ad_and_function_transforms_match_the_reference(scheme):
    """The op's autograd is reverse-mode only: a dual tensor's tangent was dropped (jvp gave 0)
    and torch.func.grad failed. The wrapper runs torch's convs under such transforms."""
    import torch.autograd.forward_ad as fwd
    x = _input((2, 3, 7, 6))
    w1, w2, bias = _factors(scheme, 4, 3, 2, (3, 3))
    res = _input((2, 4, 4, 3), seed=5)
    kwargs = dict(stride=2, padding=1, scheme=scheme, activation="relu", residual=res)
    ours = lambda x, w1: ops.factored_conv2d(x, w1, w2, bias, **kwargs)  # noqa: E731
    theirs = lambda x, w1: ref.factored_conv2d(x, w1, w2, bias, **kwargs)  # noqa: E731
    tangents = (torch.randn_like(x), torch.randn_like(w1))
    for a, b in zip(torch.func.jvp(ours, (x, w1), tangents), torch.func.jvp(theirs, (x, w1), tangents)):
        torch.testing.assert_close(a, b)
    assert torch.func.jvp(ours, (x, w1), tangents)[1].abs().sum() > 0
    with fwd.dual_level():
        dual = fwd.unpack_dual(ours(fwd.make_dual(x, tangents[0]), w1)).tangent
        expected = fwd.unpack_dual(theirs(fwd.make_dual(x, tangents[0]), w1)).tangent
    torch.testing.assert_close(dual, expected)
    torch.testing.assert_close(torch.func.grad(lambda w: ours(x, w).sum())(w1),
                               torch.func.grad(lambda w: theirs(x, w).sum())(w1))
    per_image = lambda xi, ri: ops.factored_conv2d(xi, w1, w2, bias, **dict(kwargs, residual=ri))  # noqa: E731
    torch.testing.assert_close(torch.vmap(per_image)(x.unsqueeze(1), res.unsqueeze(1)).squeeze(1), theirs(x, w1))
    with pytest.raises(ValueError, match="argument 'scheme' must be"):  # checked as the op checks
        torch.func.jvp(lambda x: ops.factored_conv2d(x, w1, w2, bias, scheme="diag"), (x,), tangents[:1])


def test_relu_backward_passes_a_nan_outputs_gradient_as_torch_does():
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    x[0, 0, 2, 2] = math.nan
    w1 = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(4, 2, 1, 1, dtype=torch.float64, requires_grad=True)
    ours = torch.autograd.grad(ops.factored_conv2d(x, w1, w2, None, 1, 1, activation="relu").sum(), (w1, w2))
    theirs = torch.autograd.grad(ref.factored_conv2d(x, w1, w2, None, 1, 1, activation="relu").sum(), (w1, w2))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, equal_nan=True)


# ----------------------------------------------------------------------------- bad input
def _good(device, scheme="channel", dtype=torch.float32):
    x = _input((2, 4, 9, 9), dtype, device)
    w1, w2, bias = _factors(scheme, 5, 4, 3, (3, 3), dtype, device)
    return x, w1, w2, bias


def _call(x, w1, w2, bias, stride=(1, 1), padding=(1, 1), dilation=(1, 1), scheme="channel", activation=None):
    return torch.ops.trp_ext.factored_conv2d(x, w1, w2, bias, stride, padding, dilation, scheme, activation)


BAD_INPUTS = [
        (lambda a: dict(a, w1=a["w1"][:, :3]), ValueError, "argument 'w1' must have x's 4 channels"),
        (lambda a: dict(a, w2=a["w2"][:, :2]), ValueError, r"argument 'w2' must be \(n, 3, 1, 1\) for the channel"),
        (lambda a: dict(a, w2=a["w2"].expand(5, 3, 1, 3)), ValueError, "argument 'w2' must be .* channel scheme"),
        (lambda a: dict(a, scheme="diagonal"), ValueError, "argument 'scheme' must be 'channel' or 'spatial'"),
        (lambda a: dict(a, activation="gelu"), ValueError, "argument 'activation' must be None or 'relu'"),
        (lambda a: dict(a, padding=(1, -1)), ValueError, "argument 'padding' must be non-negative"),
        (lambda a: dict(a, stride=(0, 1)), ValueError, "argument 'stride' must be positive"),
        (lambda a: dict(a, dilation=(1, 0)), ValueError, "argument 'dilation' must be positive"),
        (lambda a: dict(a, bias=a["bias"][:4]), ValueError, "argument 'bias' must be 1-D with w2.size"),
        (lambda a: dict(a, w1=a["w1"].double()), TypeError, "argument 'w1' must have x's dtype"),
        (lambda a: dict(a, w2=a["w2"].double()), TypeError, "argument 'w2' must have x's dtype"),
        (lambda a: dict(a, bias=a["bias"].double()), TypeError, "argument 'bias' must have x's dtype"),
        (lambda a: dict(a, x=a["x"].long(), w1=a["w1"].long(), w2=a["w2"].long(), bias=None), TypeError,
         "argument 'x' must be"),
        (lambda a: dict(a, x=a["x"][0]), ValueError, "argument 'x' must be 4-D"),
        (lambda a: dict(a, x=a["x"][..., :2], padding=(0, 0)), ValueError, "argument 'x' is too small along its width"),
        (lambda a: dict(a, padding=(1, 2 ** 62)), ValueError, "argument 'padding' is too large along the width"),
        (lambda a: dict(a, dilation=(2 ** 62 + 1, 1)), ValueError, "argument 'dilation' is too large along the height"),
        # The padded size fits int64, the output's bytes do not (the allocator's error named nothing).
        (lambda a: dict(a, padding=(2 ** 40, 2 ** 40)), ValueError, "argument 'padding' is too large: .* beyond any"),
]


@pytest.mark.parametrize("change,error,message", BAD_INPUTS)
def test_bad_input_names_the_argument(device, change, error, message):
    x, w1, w2, bias = _good(device)
    args = change(dict(x=x, w1=w1, w2=w2, bias=bias))
    with pytest.raises(error, match=message):
        _call(**args)


@pytest.mark.parametrize("change,error,message", BAD_INPUTS)
def test_bad_input_on_meta_tensors_names_the_argument(change, error, message):
    # The fake kernel (meta tensors, torch.compile) checks what the kernels check.
    x, w1, w2, bias = _good("meta")
    args = change(dict(x=x, w1=w1, w2=w2, bias=bias))
    with pytest.raises(error, match=message):
        _call(**args)


@pytest.mark.parametrize("on_meta", ["w1", "w2", "bias"])
def test_a_meta_tensor_among_cpu_tensors_is_a_device_error(on_meta):
    # Any meta argument sends the call to the fake kernel, which returned uninitialised memory.
    args = dict(zip(("x", "w1", "w2", "bias"), _good("cpu")))
    args[on_meta] = args[on_meta].to("meta")
    with pytest.raises(ValueError, match=f"argument '{on_meta}' must be on cpu, got meta"):
        _call(**args)
    with pytest.raises(ValueError, match="argument 'residual' must be on cpu, got meta"):
        ops.factored_conv2d(*_good("cpu"), padding=1, residual=torch.zeros(5, 1, 1, device="meta"))


@pytest.mark.parametrize("stride,padding,dilation", [((2 ** 31, 1), (1, 1), (1, 1)), ((1, 2 ** 40), (0, 0), (1, 1)),
                                                     ((1, 1), (10 ** 5, 1), (10 ** 5, 1)),
                                                     ((16, 10 ** 5), (1, 10 ** 5), (1, 5 * 10 ** 4)),
                                                     ((1, 2147483500), (0, 2147483500), (1, 1)),
                                                     ((1, 1431655769), (0, 2147483518), (1, 1))])
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_extreme_geometry_matches_the_reference(device, scheme, stride, padding, dilation):
    # A stride past the image (one output along it) crashed: the stride-phase buffers grew with
    # it; a padding and dilation of 1e5 on a 9x9 image exhausted memory for a 9-row output. The
    # fourth case runs unfused with one output row: at the fused kernels' stride 1 the library
    # convs gave more rows. The last two: a stride and padding near 2^31 with 3 output columns,
    # each within 32 bits but not their sums; the CUDA kernel's spatial tile width wrapped in an
    # int there and passed its shared-memory checks (found by reading, before any GPU had run them).
    x, w1, w2, bias = _good(device, scheme)
    got = _call(x, w1, w2, bias, stride, padding, dilation, scheme)
    expected = _expected(x, w1, w2, bias, stride, padding, dilation, scheme, None)
    assert got.shape == expected.shape
    torch.testing.assert_close(got.cpu().double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("past_the_image", [(2 ** 31, 1), (1, 2 ** 31)])
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_a_stride_past_the_image_does_not_change_the_next_calls_plan(scheme, past_the_image):
    # A stride past the image gives one output row (or column), and the fused path then runs it
    # at stride 1: its plan was cached under the same key as the stride-1 call of the same shapes,
    # whose output is larger. The stride-1 call that followed reused the one-row plan, computed
    # one row and returned the others uninitialised (NaN and 1e19 on CPU).
    x, w1, w2, bias = _good("cpu", scheme)
    for stride in (past_the_image, (1, 1), past_the_image):
        got = _call(x, w1, w2, bias, stride, (1, 1), (1, 1), scheme)
        expected = _expected(x, w1, w2, bias, stride, (1, 1), (1, 1), scheme, None)
        torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


def test_bad_spatial_shapes(device):
    x, w1, w2, bias = _good(device, "spatial")
    with pytest.raises(ValueError, match=r"argument 'w1' must be \(r, c, kh, 1\) for the spatial scheme"):
        _call(x, w1.expand(3, 4, 3, 2), w2, bias, scheme="spatial")
    with pytest.raises(ValueError, match=r"argument 'w2' must be \(n, 3, 1, kw\) for the spatial scheme"):
        _call(x, w1, w2.transpose(2, 3), bias, scheme="spatial")


def test_half_precision_is_cuda_only():
    x, w1, w2, bias = (t.half() for t in _good("cpu"))
    with pytest.raises(TypeError, match="argument 'x' must be float32 or float64 on cpu"):
        _call(x, w1, w2, bias)


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["w1", "w2", "bias"])
def test_device_mismatch_names_the_argument(name):
    args = dict(zip(("x", "w1", "w2", "bias"), _good("cuda")))
    args[name] = args[name].cpu()
    with pytest.raises(ValueError, match=f"argument '{name}' must be on cuda"):
        _call(**args)
