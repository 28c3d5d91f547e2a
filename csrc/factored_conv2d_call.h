// A direct Python binding of the factored_conv2d op below autograd (see the .cpp).
#pragma once

#include <Python.h>

namespace trp_ext {

// factored_conv2d_below_autograd(x, w1, w2, bias, stride, padding, dilation, scheme,
// activation, residual) -> Tensor, or NotImplemented where the caller must take the op's
// Python path instead.
PyObject* factored_conv2d_below_autograd(PyObject* self, PyObject* args);

}  // namespace trp_ext
