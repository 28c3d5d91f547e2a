"""The compiled binding the Python wrapper calls below autograd (_C.factored_conv2d_below_autograd):
the op's result, Python exceptions for bad input, dispatch modes, and NotImplemented (the generic
torch.ops path) wherever __torch_function__ or unusual arguments need that path."""
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from trp_ext import _C
from trp_ext import ops
from test_factored_conv2d import _factors, _input

OP = torch.ops.trp_ext.factored_conv2d.default


def _args(scheme="channel", residual=False):
    x = _input((2, 3, 9, 8), torch.float32)
    w1, w2, bias = _factors(scheme, 5, 3, 4, (3, 3), torch.float32)
    res = _input((2, 5, 5, 8), torch.float32, seed=3) if residual else None
    return [x, w1, w2, bias, (2, 1), [1, 1], (1, 1), scheme, "relu", res]


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("residual", [False, True])
def test_matches_the_op(scheme, residual):
    args = _args(scheme, residual)
    with torch._C._AutoDispatchBelowAutograd():
        expected = OP(*args)
    assert torch.equal(_C.factored_conv2d_below_autograd(*args), expected)


class Logged(torch.Tensor):
    calls = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        Logged.calls += 1
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.mark.parametrize("position,value", [
    (0, "subclass"), (3, "subclass"), (9, "subclass"),      # __torch_function__ overrides
    (4, (True, 1)), (5, (1, 1, 1)), (6, 2), (4, (1.0, 1)),  # pairs the op's parser would check
    (7, b"channel"), (8, 1),                                # not a str
])
def test_declines_what_needs_the_generic_path(position, value):
    args = _args(residual=True)
    args[position] = args[position].as_subclass(Logged) if value == "subclass" else value
    assert _C.factored_conv2d_below_autograd(*args) is NotImplemented


class PassThrough(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_declines_under_a_torch_function_mode():
    args = _args()
    with PassThrough():
        assert _C.factored_conv2d_below_autograd(*args) is NotImplemented


def test_wrapper_honours_torch_function_overrides():
    """Through the fallback, a subclass's __torch_function__ sees the op, as before the binding."""
    x, w1, w2, bias, *_ = _args()
    Logged.calls = 0
    out = ops.factored_conv2d(x.as_subclass(Logged), w1, w2, bias, (2, 1), 1, 1, "channel", "relu")
    assert Logged.calls > 0 and isinstance(out, Logged)
    torch.testing.assert_close(out.as_subclass(torch.Tensor),
                               ops.factored_conv2d(x, w1, w2, bias, (2, 1), 1, 1, "channel", "relu"))


def test_dispatch_modes_see_the_call():
    """The binding goes through the dispatcher, so Python dispatch modes still see the op."""
    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    with Record():
        _C.factored_conv2d_below_autograd(*_args())
    assert OP in seen


def test_bad_input_raises_python_exceptions():
    args = _args()
    args[7] = "diagonal"
    with pytest.raises(ValueError, match="scheme"):
        _C.factored_conv2d_below_autograd(*args)
    args = _args()
    args[1] = args[1].double()
    with pytest.raises(TypeError, match="w1"):
        _C.factored_conv2d_below_autograd(*args)
    with pytest.raises(TypeError):
        _C.factored_conv2d_below_autograd(*_args()[:9])  # one argument short


def test_gradients_still_take_the_autograd_path():
    """With an input that requires grad, the wrapper calls the op (not the binding), whose
    autograd kernel records the graph."""
    x, w1, w2, bias, *_ = _args()
    out = ops.factored_conv2d(x, w1.requires_grad_(), w2, bias, (2, 1), 1, 1, "channel", "relu")
    assert out.grad_fn is not None
    out.sum().backward()
    assert w1.grad is not None and w1.grad.abs().sum() > 0
