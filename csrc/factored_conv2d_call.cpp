// factored_conv2d below autograd, called from Python without the generic op machinery.
//
// torch.ops' Python call converts every argument to a boxed IValue, checks each for
// __torch_function__ overrides, and dispatches boxed: ~4 us of a 5 us call on a tiny layer,
// and 3 of ~20 us on a CIFAR layer at batch 1. This binding unpacks the arguments itself and
// calls the op's unboxed dispatcher entry, with the autograd keys excluded (as the Python
// wrapper's torch._C._AutoDispatchBelowAutograd does), so every backend kernel (CPU, CUDA,
// Meta, fake, any Python dispatch mode) still comes through the dispatcher. It answers
// NotImplemented wherever the generic path does more than that: a tensor subclass or a torch
// function mode (__torch_function__), or arguments it does not take as they are (the op then
// checks and reports them).
#include "factored_conv2d_call.h"

#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <array>
#include <optional>
#include <string_view>

namespace trp_ext {
namespace {

using Signature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const std::optional<at::Tensor>&, at::IntArrayRef, at::IntArrayRef,
                             at::IntArrayRef, c10::string_view, std::optional<c10::string_view>,
                             const std::optional<at::Tensor>&);

// A plain torch.Tensor (a subclass may override __torch_function__).
bool plain_tensor(PyObject* o) { return THPVariable_CheckExact(o); }

// None or a plain tensor.
bool optional_tensor(PyObject* o, std::optional<at::Tensor>* out) {
  if (o == Py_None) return true;
  if (!plain_tensor(o)) return false;
  *out = THPVariable_Unpack(o);
  return true;
}

// A tuple or list of two Python ints (not bools, nor int subclasses: those the generic path
// converts).
bool int_pair(PyObject* o, std::array<int64_t, 2>* out) {
  if (!(PyTuple_Check(o) || PyList_Check(o)) || PySequence_Fast_GET_SIZE(o) != 2) return false;
  PyObject** items = PySequence_Fast_ITEMS(o);
  for (int i = 0; i < 2; ++i) {
    if (!PyLong_CheckExact(items[i])) return false;
    int overflow = 0;
    (*out)[i] = PyLong_AsLongLongAndOverflow(items[i], &overflow);
    if (overflow != 0) return false;
  }
  return true;
}

// A str's UTF-8 (valid while the object lives).
bool string_arg(PyObject* o, c10::string_view* out) {
  if (!PyUnicode_CheckExact(o)) return false;
  Py_ssize_t size = 0;
  const char* data = PyUnicode_AsUTF8AndSize(o, &size);
  if (data == nullptr) {
    PyErr_Clear();
    return false;
  }
  *out = c10::string_view(data, static_cast<size_t>(size));
  return true;
}

}  // namespace

PyObject* factored_conv2d_below_autograd(PyObject* /*self*/, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject* a[10];
  if (!PyArg_UnpackTuple(args, "factored_conv2d_below_autograd", 10, 10, &a[0], &a[1], &a[2],
                         &a[3], &a[4], &a[5], &a[6], &a[7], &a[8], &a[9])) {
    return nullptr;
  }
  std::optional<at::Tensor> bias, residual;
  std::array<int64_t, 2> stride{}, padding{}, dilation{};
  c10::string_view scheme;
  std::optional<c10::string_view> activation;
  c10::string_view activation_value;
  const bool taken = !at::impl::torch_function_mode_enabled() && plain_tensor(a[0]) &&
                     plain_tensor(a[1]) && plain_tensor(a[2]) && optional_tensor(a[3], &bias) &&
                     int_pair(a[4], &stride) && int_pair(a[5], &padding) &&
                     int_pair(a[6], &dilation) && string_arg(a[7], &scheme) &&
                     (a[8] == Py_None || string_arg(a[8], &activation_value)) &&
                     optional_tensor(a[9], &residual);
  if (!taken) Py_RETURN_NOTIMPLEMENTED;
  if (a[8] != Py_None) activation = activation_value;
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("trp_ext::factored_conv2d", "")
                             .typed<Signature>();
  // Owning references, taken with the GIL held: once it is released, another thread may swap
  // or free the tensor a Python object holds (torch.utils.swap_tensors), and the kernel would
  // read freed memory. (bias and residual are owned copies already.)
  const at::Tensor x = THPVariable_Unpack(a[0]);
  const at::Tensor w1 = THPVariable_Unpack(a[1]);
  const at::Tensor w2 = THPVariable_Unpack(a[2]);
  at::Tensor out;
  {
    // As torch.ops' calls: other Python threads run meanwhile (a kernel written in Python, such
    // as the fake one, takes the GIL back itself).
    pybind11::gil_scoped_release no_gil;
    at::AutoDispatchBelowAutograd below_autograd;
    out = op.call(x, w1, w2, bias, stride, padding, dilation, scheme, activation, residual);
  }
  return THPVariable_Wrap(std::move(out));
  END_HANDLE_TH_ERRORS
}

}  // namespace trp_ext
