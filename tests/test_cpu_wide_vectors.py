"""The CPU multiply-add loops on 512-bit vectors (``ops.cpu_wide_vectors``): on a CPU with
AVX-512 they must give the 256-bit loops' results bit for bit (each lane runs the same
multiply-adds in the same order), over every path that runs them and every count of positions
they split into 512-bit vectors and a 256-bit rest. The rest of the suite checks whichever width
``auto`` picks on this CPU against the reference; this file checks the other one through the
equality. The switch's context manager is tested with the others in
test_factored_conv2d_winograd.py."""
import contextlib
import itertools

import pytest
import torch

import trp_ext
from trp_ext import _reference as ref
from trp_ext import ops
from test_factored_conv2d import _check, _factors, _input

HAS_AVX512 = trp_ext._C.cpu_kernels() == "avx512"
needs_avx512 = pytest.mark.skipif(not HAS_AVX512, reason="this CPU's kernels have no 512-bit build")


def _both_widths(fn):
    with ops.cpu_wide_vectors("never"):
        assert trp_ext._C.cpu_vector_bits() == 256
        narrow = fn()
    with ops.cpu_wide_vectors("always"):
        assert trp_ext._C.cpu_vector_bits() == 512
        wide = fn()
    return narrow, wide


def test_vector_bits_follow_the_switch_and_the_cpu():
    """'never' keeps 256-bit loops everywhere; 'always' takes 512-bit ones exactly where the
    kernels have an AVX-512 build; 'auto' one of the two."""
    with ops.cpu_wide_vectors("never"):
        assert trp_ext._C.cpu_vector_bits() == 256
    with ops.cpu_wide_vectors("always"):
        assert trp_ext._C.cpu_vector_bits() == (512 if HAS_AVX512 else 256)
    assert ops.cpu_wide_vectors_mode() == "auto"
    assert trp_ext._C.cpu_vector_bits() in ((256, 512) if HAS_AVX512 else (256,))


def _forced(switches):
    """The path switches {name: mode} set for a with block."""
    stack = contextlib.ExitStack()
    for name, mode in switches.items():
        stack.enter_context(getattr(ops, name)(mode))
    return stack


PATHS = {
    "band": dict(cpu_winograd="never", cpu_channel_vectorised="never"),
    "winograd": dict(cpu_winograd="always", cpu_channel_vectorised="never"),
    "channel_vectorised": dict(cpu_winograd="never", cpu_channel_vectorised="always"),
    "split_images": dict(cpu_winograd="never", cpu_channel_vectorised="never", cpu_split_images="always"),
}


@needs_avx512
@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("scheme", ref.SCHEMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_wide_loops_equal_narrow_ones_bit_for_bit(path, scheme, dtype):
    """Output sizes 2..19 (band counts of 8, 16, 24, 40, ... positions: a rest of one or three
    256-bit vectors, or none), ranks and output channels across the micro-kernel's row blocks and
    the channel-vectorised path's panels, several input-channel groups (accumulating calls),
    bias, ReLU, stride 2 and dilation; and the result against the reference."""
    switches = PATHS[path]
    cases = itertools.product((2, 3, 7, 8, 12, 19), ((5, 7, 9), (40, 33, 17)), (1, 2))
    with _forced(switches):
        for size, (c, r, n), stride in cases:
            x = _input((2, c, size + 2, size + 1), dtype)
            w1, w2, bias = _factors(scheme, n, c, r, (3, 3), dtype)
            args = (bias, stride, 1, (1, 2) if stride == 1 else 1, scheme, "relu")
            narrow, wide = _both_widths(lambda: ops.factored_conv2d(x, w1, w2, *args))
            assert torch.equal(narrow, wide), (path, size, c, r, n, stride)
            _check(wide, x, w1, w2, *args, tol=2e-5 if dtype == torch.float32 else 1e-12)


@needs_avx512
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lowrank_project_products_equal_bit_for_bit(dtype):
    """The CPU projection's float64 products run on the same micro-kernel (small_gemm), warm
    starts included."""
    g = torch.Generator().manual_seed(3)
    mats = [torch.randn(m, n, generator=g, dtype=dtype) for m, n in ((64, 576), (96, 96), (130, 40))]

    def project():
        first = ops.lowrank_project(mats, 0.9, None, None, None, True)
        drifted = [m + 1e-3 * torch.randn(m.shape, generator=torch.Generator().manual_seed(5), dtype=dtype)
                   for m in first.projected]
        second = ops.lowrank_project(drifted, 0.9, None, None, first.bases, True)
        return [*first.projected, *first.subgradients, *second.projected, *second.subgradients, first.ranks,
                second.ranks]

    narrow, wide = _both_widths(project)
    for a, b in zip(narrow, wide):
        assert torch.equal(a, b)

