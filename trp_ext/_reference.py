"""Pure-PyTorch reference of every trp_ext op and scheme: the oracle the kernels are tested against.

Written for clarity, not speed. Shapes use n = out channels, c = in channels, (kh, kw) = kernel.

Schemes (how a conv weight becomes a matrix, and how a rank-r matrix becomes two convs):
  channel: W (n, c, kh, kw) -> M = n x (c*kh*kw) = U S V^T
           conv kh x kw (c -> r), with the original stride/padding/dilation,
           then conv 1x1 (r -> n).
  spatial: W -> M = (c*kh) x (kw*n), M[(i, y), (x, o)] = W[o, i, y, x] = U S V^T
           conv kh x 1 (c -> r), with the original stride/padding/dilation on the height axis,
           then conv 1 x kw (r -> n), with the original ones on the width axis.
"""
import torch
import torch.nn.functional as F

SCHEMES = ("channel", "spatial")


def check_scheme(scheme):
    if scheme not in SCHEMES:
        raise ValueError(f"argument 'scheme' must be one of {SCHEMES}, got {scheme!r}")


# ----------------------------------------------------------------------------- reshapes
def conv_weight_to_matrix(weight, scheme):
    """(n, c, kh, kw) conv weight -> its matrix in the given scheme."""
    check_scheme(scheme)
    n, c, kh, kw = weight.shape
    if scheme == "channel":
        return weight.reshape(n, c * kh * kw)
    return weight.permute(1, 2, 3, 0).reshape(c * kh, kw * n)


def matrix_to_conv_weight(matrix, scheme, weight_shape):
    """Inverse of :func:`conv_weight_to_matrix`."""
    check_scheme(scheme)
    n, c, kh, kw = weight_shape
    if scheme == "channel":
        return matrix.reshape(n, c, kh, kw)
    return matrix.reshape(c, kh, kw, n).permute(3, 0, 1, 2)


# ----------------------------------------------------------------------------- rank rules
def _scaled_rows(s64):
    """Rows whose largest magnitude lies outside 2^+-500 scaled by a power of two, so that their
    squares neither overflow nor underflow (as the kernels do); other rows as they are."""
    if s64.numel() == 0:
        return s64
    largest = s64.abs().amax(dim=1, keepdim=True)
    exponent = torch.frexp(largest).exponent
    exponent = torch.where((largest > 2.0 ** 500) | ((largest > 0) & (largest < 2.0 ** -500)), exponent, 0)
    half = torch.div(exponent, 2, rounding_mode="floor")  # two steps: 2^-exponent itself may not exist
    return torch.ldexp(torch.ldexp(s64, -half), -(exponent - half))


def energy_rank(s, energy):
    """Smallest r with sum(s[:r]^2) >= energy * sum(s^2), per row of s (float64 inside)."""
    s64 = torch.as_tensor(s).double()
    squeeze = s64.dim() == 1
    s64 = s64.reshape(1, -1) if squeeze else s64
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"argument 'energy' must lie in (0, 1], got {energy}")
    if not torch.isfinite(s64).all():
        raise ValueError("argument 's' has a NaN or Inf value")
    s64 = _scaled_rows(s64)
    cumulative = torch.cumsum(s64 * s64, dim=1)
    total = cumulative[:, -1:] if s64.shape[1] else s64.new_zeros(s64.shape[0], 1)
    ranks = (cumulative < energy * total).sum(dim=1) + 1
    ranks = torch.where(total[:, 0] > 0, ranks, torch.zeros_like(ranks))
    return ranks[0] if squeeze else ranks


def value_rank(s, threshold):
    """Number of singular values >= threshold, per row of s."""
    return (torch.as_tensor(s) >= threshold).sum(dim=-1)


def select_rank(s, energy, value_threshold=None, max_rank=None):
    """The rank rule of lowrank_project: energy, then the value threshold and max_rank caps."""
    rank = int(energy_rank(s, energy))
    if value_threshold is not None:
        rank = min(rank, int(value_rank(s, value_threshold)))
    if max_rank is not None:
        rank = min(rank, int(max_rank))
    return rank


# ----------------------------------------------------------------------------- projection
def svd64(matrix):
    """Exact thin SVD in float64."""
    return torch.linalg.svd(matrix.double(), full_matrices=False)


def lowrank_project(matrix, energy, value_threshold=None, max_rank=None):
    """Truncated-SVD projection of one matrix. Returns (projected in matrix.dtype, rank)."""
    u, s, vh = svd64(matrix)
    rank = select_rank(s, energy, value_threshold, max_rank)
    projected = (u[:, :rank] * s[:rank]) @ vh[:rank]
    return projected.to(matrix.dtype), rank


def nuclear_subgradient(matrix, rank=None, tol=None):
    """Sub-gradient of the nuclear norm at `matrix`.

    rank=None: the full U V^T over the singular values above `tol` (default: the LAPACK-style
    max(m, n) * eps * s_max, in float64). rank=r: the truncated U_r V_r^T.
    """
    u, s, vh = svd64(matrix)
    if rank is None:
        if tol is None:
            tol = max(matrix.shape) * torch.finfo(torch.float64).eps * (s[0].item() if s.numel() else 0.0)
        rank = int((s > tol).sum())
    return (u[:, :rank] @ vh[:rank]).to(matrix.dtype)


# ----------------------------------------------------------------------------- factored convs
def split_conv_weight(weight, scheme, rank):
    """Splits a conv weight into the two factor weights of a rank-`rank` factored conv.

    The singular values are shared evenly (sqrt(S) on each side), which keeps both factors at
    the same scale. Returns (w1, w2):
      channel: w1 (r, c, kh, kw), w2 (n, r, 1, 1)
      spatial: w1 (r, c, kh, 1),  w2 (n, r, 1, kw)
    """
    n, c, kh, kw = weight.shape
    matrix = conv_weight_to_matrix(weight, scheme)
    if not 0 <= rank <= min(matrix.shape):
        raise ValueError(f"argument 'rank' must lie in [0, {min(matrix.shape)}] for a {tuple(matrix.shape)} "
                         f"{scheme} matrix, got {rank}")
    u, s, vh = svd64(matrix)
    root = s[:rank].sqrt()
    left = u[:, :rank] * root  # rows x r
    right = root[:, None] * vh[:rank]  # r x cols
    if scheme == "channel":
        w1 = right.reshape(rank, c, kh, kw)
        w2 = left.reshape(n, rank, 1, 1)
    else:
        w1 = left.t().reshape(rank, c, kh, 1)
        w2 = right.reshape(rank, kw, n).permute(2, 0, 1).unsqueeze(2)
    return w1.to(weight.dtype).contiguous(), w2.to(weight.dtype).contiguous()


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def factor_conv_params(scheme, stride, padding, dilation):
    """Where the original conv's stride, padding and dilation go.

    Returns ((stride1, padding1, dilation1), (stride2, padding2, dilation2)) for the two convs.
    channel: all on the first (kh x kw) conv; the 1x1 conv has none.
    spatial: the height parts on the first (kh x 1) conv, the width parts on the second (1 x kw).
    """
    check_scheme(scheme)
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    if scheme == "channel":
        return (stride, padding, dilation), ((1, 1), (0, 0), (1, 1))
    first = ((stride[0], 1), (padding[0], 0), (dilation[0], 1))
    second = ((1, stride[1]), (0, padding[1]), (1, dilation[1]))
    return first, second


def factored_conv2d(x, w1, w2, bias=None, stride=1, padding=0, dilation=1, scheme="channel",
                    activation=None, residual=None):
    """The factored conv as two F.conv2d calls, then bias, an optional residual (added, as a
    ResNet block's shortcut) and an optional ReLU."""
    (s1, p1, d1), (s2, p2, d2) = factor_conv_params(scheme, stride, padding, dilation)
    middle = F.conv2d(x, w1, None, s1, p1, d1)
    out = F.conv2d(middle, w2, bias, s2, p2, d2)
    if residual is not None:
        out = out + residual
    if activation == "relu":
        out = F.relu(out)
    elif activation is not None:
        raise ValueError(f"argument 'activation' must be None or 'relu', got {activation!r}")
    return out
