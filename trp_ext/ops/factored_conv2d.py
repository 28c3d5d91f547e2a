"""factored_conv2d: both stages of a factored conv in one op (``torch.ops.trp_ext.factored_conv2d``).

The CPU and CUDA kernels keep the r-channel intermediate in cache or shared memory instead of
writing it to memory between two library calls, and apply the epilogue (bias, a residual such as
a ResNet block's shortcut, ReLU) before the output reaches memory. The backward composes torch
convolutions and recomputes the intermediate, so nothing but the inputs (and the output, for the
ReLU mask) is saved.
"""
from typing import Optional

import torch
import torch.autograd.forward_ad as forward_ad
from torch._prims_common import suggest_memory_format

from trp_ext import _C
from trp_ext import _reference as ref
from trp_ext.ops._path_switch import path_switch


def factored_conv2d(
    x: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride=1,
    padding=0,
    dilation=1,
    scheme: str = "channel",
    activation: Optional[str] = None,
    residual: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The factored conv: conv(x, w1) then conv(., w2), bias, optional residual, optional ReLU,
    per `scheme`.

    Args:
        x: input, ``(N, c, H, W)``, NCHW or channels_last (any strides). float32 or float64 on
            CPU; float32, float16 or bfloat16 on CUDA (float64 on CUDA runs the unfused
            composition).
        w1: first factor. ``channel``: ``(r, c, kh, kw)``; ``spatial``: ``(r, c, kh, 1)``.
        w2: second factor. ``channel``: ``(n, r, 1, 1)``; ``spatial``: ``(n, r, 1, kw)``.
        bias: ``(n,)`` or None; a folded BatchNorm goes here.
        stride, padding, dilation: those of the original ``kh x kw`` conv (an int or a pair).
            ``channel`` applies them to the first conv; ``spatial`` applies the height parts to
            the ``kh x 1`` conv and the width parts to the ``1 x kw`` conv, exactly as
            :func:`trp_ext._reference.factored_conv2d`.
        scheme: ``"channel"`` or ``"spatial"``.
        activation: None or ``"relu"``, applied after the bias and the residual.
        residual: None, or a tensor added to the output before the activation (a ResNet
            block's shortcut: ``relu(conv(x) + shortcut)`` in one pass), in x's dtype and on its
            device, of the output's shape or broadcastable to it.

    Returns:
        ``(N, n, Ho, Wo)``, the shape the original conv gives, in x's memory format.

    Under forward-mode AD (``torch.autograd.forward_ad``) and ``torch.func`` transforms (``jvp``,
    ``grad``, ``vmap``, ...) this runs the unfused composition of torch convs, whose rules those
    transforms have: the op's own autograd is reverse-mode only, and the raw op
    ``torch.ops.trp_ext.factored_conv2d`` drops a forward-mode tangent.

    Raises:
        ValueError: a shape that does not fit the scheme (the message names the argument), an
            unknown scheme or activation, a negative padding, a non-positive stride or
            dilation, an input smaller than the dilated kernel, a residual that does not
            broadcast to the output, or tensors on different devices.
        TypeError: a dtype the device does not support, or factors, bias or residual in
            another dtype.
    """
    return factored_conv2d_normalised(x, w1, w2, bias, ref._pair(stride), ref._pair(padding), ref._pair(dilation),
                                      scheme, activation, residual)


def factored_conv2d_normalised(x, w1, w2, bias, stride, padding, dilation, scheme, activation, residual=None):
    """:func:`factored_conv2d` for arguments already in the op's form (stride, padding and
    dilation as pairs), as traced graphs hold them: what deployed graphs call
    (trp_ext.fusion.fast_calls).

    It runs the op, skipping its autograd kernel when nothing needs a gradient. That kernel,
    installed by register_autograd, runs in Python even under ``torch.no_grad()``, only to
    redispatch below autograd there: ~10 us a call, a large share of a small layer's time
    (inference at batch 1). Under ``torch.inference_mode()`` the dispatcher skips it already.
    Whenever the autograd kernel is not needed, the call goes through the compiled binding
    ``_C.factored_conv2d_below_autograd``, which skips torch.ops' generic argument handling
    (~3 us) and answers NotImplemented where that handling is needed (tensor subclasses, torch
    function modes, arguments of other types); the call then takes torch.ops' path."""
    op = torch.ops.trp_ext.factored_conv2d.default
    args = (x, w1, w2, bias, stride, padding, dilation, scheme, activation, residual)
    # is_compiling first: torch.compile cannot trace is_inference_mode_enabled.
    if torch.compiler.is_compiling():
        return op(*args)
    if _under_function_transform():
        # The op's autograd (register_autograd) is reverse-mode only, and a dual tensor does not
        # require grad: forward-mode AD dropped the tangent, silently (torch.func.jvp gave 0), and
        # torch.func.grad failed. torch's convs have every transform's rules: checked as the op
        # checks, the call runs the reference composition.
        _check_fake_args(*args)
        return ref.factored_conv2d(*args)
    inference = torch.is_inference_mode_enabled()
    if not inference and _may_need_grad(x, w1, w2, bias, residual):
        return op(*args)
    out = _C.factored_conv2d_below_autograd(*args)
    if out is not NotImplemented:
        return out
    if inference:
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def cpu_winograd_mode() -> str:
    """How the CPU kernel runs 3x3 layers at stride 1 and dilation 1: ``"auto"`` (the default)
    uses Winograd where it measured faster. Channel scheme: F(2x2, 3x3), which needs 16 instead
    of 36 multiplications per 2x2 output tile and (rank, channel) pair (rank >= 16, >= 32 input
    channels, >= 128 tiles per call, or >= 48 from rank 32 on). Spatial scheme: F(2, 3) along
    each axis, 4 instead of 6 per 2 outputs of its 3x1 and 1x3 convs (rank >= 16, >= 32 input
    channels, >= 1024 first-conv positions per call, batch x ceil(out_h / 2) x W, or >= 128 from
    rank 32 on).
    ``"never"`` always runs the direct kernel; ``"always"`` uses Winograd wherever it applies.
    For finite inputs results differ only by rounding. The transforms add up to 16 input values, so an Inf in the input can
    give NaN where the direct conv gives +-Inf (the same outputs are non-finite before the
    activation; after a ReLU, such an output is NaN where the direct conv's -Inf gives 0), and
    inputs near the float range overflow sooner; ``"never"`` keeps the direct behaviour."""
    return _C.cpu_winograd()


def cpu_channel_vectorised_mode() -> str:
    """How the CPU kernel runs the layers that do not take Winograd: ``"auto"`` (the default)
    uses the channel-vectorised path where its estimated work is lower, ``"never"`` always the
    band path, ``"always"`` always the channel-vectorised one. The band path vectorises over
    output positions and computes each output row at its padded input rows' length, so a 7x7
    output costs 56 positions; the channel-vectorised path vectorises over output channels with
    weights packed on every call, computes exactly the output's positions, and runs whole images
    in parallel. ``"auto"`` takes it where its estimated work, with the packing and the channels
    padded to panels of 32 (16 in float64), is below the band path's: in practice at batches of
    at least the thread count, ranks of 32 or more, and outputs of up to about 28x28. Results
    differ only by rounding (the bias is added after the sum instead of before)."""
    return _C.cpu_channel_vectorised()


def cpu_split_images_mode() -> str:
    """How the CPU kernel's band path (the layers that take neither Winograd nor the
    channel-vectorised path) shares an image among threads: ``"auto"`` (the default) splits it
    by channels (each thread a share of the intermediate's and the output's channels, over all
    positions) where splitting it by bands of output rows would leave a thread idle: at batch 1
    on two threads (the only count it was measured on), for layers with enough work and outputs
    of few rows (a 7x7 output splits 4 + 3 rows); ``"never"`` always uses bands; ``"always"``
    splits every image the band path runs, into at least two parts. Results are the same bit
    for bit either way."""
    return _C.cpu_split_images()


def cpu_wide_vectors_mode() -> str:
    """Whether the CPU multiply-add loops (the micro-kernels of ``factored_conv2d``, which
    ``lowrank_project``'s float64 products also run on) use 512-bit vectors on a CPU with
    AVX-512: ``"auto"`` (the default) where the CPU's 512-bit multiply-adds measured at least
    1.5x the 256-bit ones' rate, once per process (Intel server cores with two 512-bit FMA units
    run twice the multiply-adds; AMD Zen 4 splits them into 256-bit halves and keeps 256-bit
    loops); ``"always"`` on every CPU with AVX-512; ``"never"`` 256-bit loops. Without AVX-512
    (or with ``ATEN_CPU_CAPABILITY`` below ``avx512``) the loops stay 256-bit whatever the mode.
    Results are the same bit for bit either way; ``trp_ext._C.cpu_vector_bits()`` says which
    width runs now."""
    return _C.cpu_wide_vectors()


def cpu_wide_vectors(mode: str):
    """Runs the block with the CPU wide-vectors mode set to `mode` (see
    :func:`cpu_wide_vectors_mode`); the mode is process-wide, and the previous one comes back on
    exit."""
    return path_switch("cpu_wide_vectors", mode)


def cpu_winograd(mode: str):
    """Runs the block with the CPU Winograd mode set to `mode` (see :func:`cpu_winograd_mode`);
    the mode is process-wide, and the previous one comes back on exit."""
    return path_switch("cpu_winograd", mode)


def cpu_channel_vectorised(mode: str):
    """Runs the block with the CPU channel-vectorised mode set to `mode` (see
    :func:`cpu_channel_vectorised_mode`); the mode is process-wide, and the previous one comes
    back on exit."""
    return path_switch("cpu_channel_vectorised", mode)


def cpu_split_images(mode: str):
    """Runs the block with the CPU split-images mode set to `mode` (see
    :func:`cpu_split_images_mode`); the mode is process-wide, and the previous one comes back on
    exit."""
    return path_switch("cpu_split_images", mode)


def cuda_pipelined_loads_mode() -> str:
    """How the CUDA kernel loads its first GEMM's operands (the input's im2col rows and the
    first weight): ``"auto"`` (the default) and ``"always"`` use a three-stage ``cp.async``
    pipeline wherever it applies: float16 or bfloat16 on a GPU of compute capability 8.0 or
    later, with the input and the first weight in channels_last and their channels a multiple
    of 8, so that every load is 16 aligned bytes. Each block then keeps the next two reduction
    chunks in flight while its tensor cores work on the current one, instead of waiting for
    every chunk's loads. ``"never"`` always loads one chunk at a time (the only way before).
    Results are the same bit for bit either way."""
    return _C.cuda_pipelined_loads()


def cuda_pipelined_loads(mode: str):
    """Runs the block with the CUDA pipelined-loads mode set to `mode` (see
    :func:`cuda_pipelined_loads_mode`); the mode is process-wide, and the previous one comes
    back on exit."""
    return path_switch("cuda_pipelined_loads", mode)


def _under_function_transform():
    """Inside forward-mode AD (torch.autograd.forward_ad) or a torch.func transform (jvp, grad,
    vmap, ...): two cheap reads, as this runs on every call."""
    return forward_ad._current_level >= 0 or torch._C._functorch.peek_interpreter_stack() is not None


def _may_need_grad(*tensors):
    if not torch.is_grad_enabled():
        return False
    return any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def _out_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def output_shape(x, w1, w2, stride, padding, dilation, scheme):
    """``(N, n, Ho, Wo)`` of a call (stride, padding and dilation as pairs)."""
    kh = w1.shape[2]
    kw = w2.shape[3] if scheme == "spatial" else w1.shape[3]
    return (x.shape[0], w2.shape[0], _out_size(x.shape[2], kh, stride[0], padding[0], dilation[0]),
            _out_size(x.shape[3], kw, stride[1], padding[1], dilation[1]))


def broadcasts_to(tensor, shape) -> bool:
    """Whether `tensor` broadcasts to `shape` without enlarging it (the residual's rule)."""
    return tensor.dim() <= len(shape) and all(t == 1 or t == s for t, s in zip(tensor.shape[::-1], shape[::-1]))


INT64_MAX = 2 ** 63 - 1


def _check_fake_args(x, w1, w2, bias, stride, padding, dilation, scheme, activation, residual):
    """The kernels' argument checks (csrc/common/factored_conv2d_checks.h), on shapes, dtypes and
    devices: under torch.compile, and for meta tensors, which a kernel never sees (a meta bias
    with CPU inputs came here and returned uninitialised memory). Returns the output's shape."""
    op = "factored_conv2d(): argument"
    torch._check_value(scheme in ("channel", "spatial"), lambda: f"{op} 'scheme' must be 'channel' or 'spatial', "
                                                                f"got {scheme!r}")
    torch._check_value(activation in (None, "relu"), lambda: f"{op} 'activation' must be None or 'relu', "
                                                            f"got {activation!r}")
    named = {"x": x, "w1": w1, "w2": w2, "bias": bias, "residual": residual}
    for name in ("x", "w1", "w2"):
        torch._check_value(named[name].dim() == 4, lambda: f"{op} '{name}' must be 4-D, got shape "
                                                           f"{tuple(named[name].shape)}")
    torch._check_type(x.dtype.is_floating_point, lambda: f"{op} 'x' must be a floating-point tensor, got {x.dtype}")
    # The CPU kernel takes float32 and float64 only (CUDA's adds float16 and bfloat16): a traced
    # graph should fail where the eager call would, not later at run time.
    torch._check_type(x.device.type != "cpu" or x.dtype in (torch.float32, torch.float64),
                      lambda: f"{op} 'x' must be float32 or float64 on cpu, got {x.dtype}")
    for name, tensor in named.items():
        if tensor is None or name == "x":
            continue
        torch._check_value(tensor.device == x.device, lambda: f"{op} '{name}' must be on {x.device}, got {tensor.device}")
        torch._check_type(tensor.dtype == x.dtype, lambda: f"{op} '{name}' must have x's dtype {x.dtype}, got {tensor.dtype}")
    rank, kh = w1.shape[0], w1.shape[2]
    torch._check_value(w1.shape[1] == x.shape[1], lambda: f"{op} 'w1' must have x's {x.shape[1]} channels in dim 1, "
                                                          f"got shape {tuple(w1.shape)}")
    torch._check_value(kh >= 1 and w1.shape[3] >= 1, lambda: f"{op} 'w1' must have a non-empty kernel, "
                                                             f"got shape {tuple(w1.shape)}")
    if scheme == "spatial":
        torch._check_value(w1.shape[3] == 1, lambda: f"{op} 'w1' must be (r, c, kh, 1) for the spatial scheme, "
                                                     f"got shape {tuple(w1.shape)}")
        fits, kw, want = w2.shape[1] == rank and w2.shape[2] == 1 and w2.shape[3] >= 1, w2.shape[3], "kw"
    else:
        fits, kw, want = w2.shape[1] == rank and w2.shape[2] == 1 and w2.shape[3] == 1, w1.shape[3], "1"
    torch._check_value(fits, lambda: f"{op} 'w2' must be (n, {rank}, 1, {want}) for the {scheme} scheme, "
                                     f"got shape {tuple(w2.shape)}")
    if bias is not None:
        torch._check_value(bias.dim() == 1 and bias.shape[0] == w2.shape[0],
                           lambda: f"{op} 'bias' must be 1-D with w2.size(0) = {w2.shape[0]} values, "
                                   f"got shape {tuple(bias.shape)}")
    for name, pair, least, rule in (("stride", stride, 1, "positive"), ("padding", padding, 0, "non-negative"),
                                    ("dilation", dilation, 1, "positive")):
        torch._check_value(len(pair) == 2, lambda: f"{op} '{name}' must have 2 values (height, width), got {len(pair)}")
        torch._check_value(pair[0] >= least and pair[1] >= least, lambda: f"{op} '{name}' must be {rule}, got {list(pair)}")
    for axis, size, kernel, pad, dil in (("height", x.shape[2], kh, padding[0], dilation[0]),
                                         ("width", x.shape[3], kw, padding[1], dilation[1])):
        torch._check_value(pad <= (INT64_MAX - size) // 2, lambda: f"{op} 'padding' is too large along the {axis}")
        torch._check_value(kernel <= 1 or dil <= (INT64_MAX - 1) // (kernel - 1),
                           lambda: f"{op} 'dilation' is too large along the {axis}")
        torch._check_value(size + 2 * pad >= dil * (kernel - 1) + 1,
                           lambda: f"{op} 'x' is too small along its {axis} for the dilated kernel")
    # As the kernels: an output too large for any allocation, which only a padding can cause.
    shape = output_shape(x, w1, w2, stride, padding, dilation, scheme)
    values = shape[0] * shape[1] * shape[2] * shape[3]
    torch._check_value(values * x.element_size() < 2 ** 62,
                       lambda: f"{op} 'padding' is too large: {list(padding)} gives an output of {values} values, "
                               "beyond any allocation")
    return shape


@torch.library.register_fake("trp_ext::factored_conv2d")
def _factored_conv2d_fake(x, w1, w2, bias, stride, padding, dilation, scheme, activation, residual=None):
    shape = _check_fake_args(x, w1, w2, bias, stride, padding, dilation, scheme, activation, residual)
    if residual is not None:
        torch._check_value(broadcasts_to(residual, shape),
                           lambda: f"factored_conv2d(): argument 'residual' must broadcast to the output shape "
                                   f"{list(shape)}, got shape {list(residual.shape)}")
    return x.new_empty(shape).contiguous(memory_format=suggest_memory_format(x))


def _setup_context(ctx, inputs, output):
    x, w1, w2, bias, stride, padding, dilation, scheme, activation, *rest = inputs
    residual = rest[0] if rest else None
    ctx.conv_params = ref.factor_conv_params(scheme, stride, padding, dilation)
    ctx.has_bias = bias is not None
    ctx.residual_shape = None if residual is None else residual.shape
    ctx.relu = activation == "relu"
    ctx.save_for_backward(x, w1, w2, output if ctx.relu else None)


def _backward(ctx, grad_out):
    x, w1, w2, output = ctx.saved_tensors
    (s1, p1, d1), (s2, p2, d2) = ctx.conv_params
    need_x, need_w1, need_w2, need_bias = ctx.needs_input_grad[:4]
    # Called without the residual argument, the op has nine inputs.
    need_residual = len(ctx.needs_input_grad) > 9 and ctx.needs_input_grad[9]
    if ctx.relu:
        # As torch's ReLU backward: zero where the output is <= 0, so a NaN output passes its
        # gradient on (a mask of output > 0 zeroed it)
        grad_out = grad_out.masked_fill(output <= 0, 0)
    grad_bias = grad_out.sum((0, 2, 3)) if ctx.has_bias and need_bias else None
    # The residual is added to the output: its gradient is the output's, summed where it broadcast.
    grad_residual = grad_out.sum_to_size(ctx.residual_shape) if need_residual else None
    grad_x = grad_w1 = grad_w2 = None
    if min(x.shape[1], w1.shape[0], w2.shape[0], x.shape[2], x.shape[3]) == 0:
        # No channels in, none between or none out, or an input of padding only: the output does
        # not depend on x, w1 or w2 (it is the bias, or empty), and aten's convs refuse such shapes.
        grad_x, grad_w1, grad_w2 = (torch.zeros_like(t) if need else None
                                    for t, need in ((x, need_x), (w1, need_w1), (w2, need_w2)))
    elif need_x or need_w1 or need_w2:
        # Recompute the intermediate rather than keep it: it is what the fused op avoids storing.
        middle = torch.nn.functional.conv2d(x, w1, None, s1, p1, d1)
        grad_middle, grad_w2, _ = torch.ops.aten.convolution_backward(
            grad_out, middle, w2, None, list(s2), list(p2), list(d2), False, [0, 0], 1,
            [need_x or need_w1, need_w2, False],
        )
        if need_x or need_w1:
            grad_x, grad_w1, _ = torch.ops.aten.convolution_backward(
                grad_middle, x, w1, None, list(s1), list(p1), list(d1), False, [0, 0], 1,
                [need_x, need_w1, False],
            )
    grads = (grad_x, grad_w1, grad_w2, grad_bias, None, None, None, None, None, grad_residual)
    return grads[:len(ctx.needs_input_grad)]


torch.library.register_autograd("trp_ext::factored_conv2d", _backward, setup_context=_setup_context)
