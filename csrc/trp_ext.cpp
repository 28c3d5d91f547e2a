// The one place where trp_ext's operator schemas are declared. Kernels live in cpu/ and cuda/
// and register with TORCH_LIBRARY_IMPL; fake kernels and autograd are registered from Python
// (trp_ext/ops/). The Python module below has no ops of its own: loading it registers the
// library with the dispatcher; it reports how it was built, switches the kernels' optional paths
// (CPU and CUDA) and reports their counts, and calls factored_conv2d below autograd without
// torch.ops' generic argument handling (factored_conv2d_call.cpp).
#include <Python.h>

#include <string>
#include <torch/version.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/path_switch.h"
#include "cpu/cpu_features.h"
#include "cpu/factored_conv2d_cv.h"
#include "cpu/factored_conv2d_path_switch.h"
#include "cpu/factored_conv2d_shared.h"
#include "cpu/factored_conv2d_split.h"
#include "cpu/factored_conv2d_winograd.h"
#include "factored_conv2d_call.h"
#ifdef TRP_EXT_WITH_CUDA
#include "cuda/cusolver_batched_eigh.h"
#endif

TORCH_LIBRARY(trp_ext, m) {
  // Per row of singular values s (descending, zero-padded): the smallest r with
  // sum(s[:r]^2) >= energy * sum(s^2); 0 for an all-zero row.
  m.def("energy_rank(Tensor s, float energy) -> Tensor");
  // Factored conv: conv(x, w1) then conv(., w2), + bias, + an optional residual (broadcast to
  // the output, as a ResNet block's shortcut), optional ReLU, in one kernel.
  // channel: w1 (r, c, kh, kw) takes stride/padding/dilation, w2 is (n, r, 1, 1);
  // spatial: w1 (r, c, kh, 1) takes their height parts, w2 (n, r, 1, kw) their width parts.
  m.def(
      "factored_conv2d(Tensor x, Tensor w1, Tensor w2, Tensor? bias, int[2] stride, "
      "int[2] padding, int[2] dilation, str scheme, str? activation, Tensor? residual=None) "
      "-> Tensor");
  // Per matrix (of any shapes): the truncated-SVD projection at the energy rank (capped by
  // value_threshold and max_rank), optionally the sub-gradient U_r V_r^T, and a basis that
  // warm-starts the next call on the same list of shapes.
  m.def(
      "lowrank_project(Tensor[] mats, float energy, float? value_threshold, int? max_rank, "
      "Tensor[]? bases, bool want_subgradient) -> (Tensor[] projected, Tensor ranks, "
      "Tensor[] subgradients, Tensor[] bases)");
  // Process-wide counts of matrices lowrank_project solved [cold, warm, widened, fallback],
  // then the total of warm-start subspace iterations.
  m.def("lowrank_project_stats(bool reset=False) -> int[]");
  // Private, for tests: the CUDA lowrank_project's Jacobi eigensolver (its twin on the CPU) on
  // symmetric float64 (B, n, n) matrices, n <= 112: values (B, n) descending, vectors (B, n, n)
  // (column j belongs to values[:, j]), converged (B) (false if the sweep limit came first).
  m.def("_jacobi_eigh(Tensor matrices) -> (Tensor values, Tensor vectors, Tensor converged)");
}

namespace trp_ext {

PathSwitch& cuda_pipeline_switch() {
  static PathSwitch path;
  return path;
}
PathSwitch& cuda_batched_eigh_switch() {
  static PathSwitch path;
  return path;
}
PathSwitch& cpu_batched_projection_switch() {
  static PathSwitch path;
  return path;
}

}  // namespace trp_ext

namespace {

PyObject* build_info(PyObject* /*self*/, PyObject* /*args*/) {
#ifdef TRP_EXT_WITH_CUDA
  PyObject* cuda = Py_True;
#else
  PyObject* cuda = Py_False;
#endif
  // Whether at::parallel_for really runs in parallel in this library: with torch's OpenMP
  // backend that takes -fopenmp here (see setup.py), else every CPU kernel runs on one thread.
#ifdef INTRA_OP_PARALLEL
  PyObject* parallel = Py_True;
#else
  PyObject* parallel = Py_False;
#endif
  return Py_BuildValue("{s:O,s:(iii),s:O}", "cuda", cuda, "torch_version", TORCH_VERSION_MAJOR,
                       TORCH_VERSION_MINOR, TORCH_VERSION_PATCH, "intra_op_parallel", parallel);
}

PyObject* cuda_batched_eigh_available(PyObject* /*self*/, PyObject* /*args*/) {
#ifdef TRP_EXT_WITH_CUDA
  return PyBool_FromLong(trp_ext::cuda::cusolver_batched_eigh_available());
#else
  Py_RETURN_FALSE;
#endif
}

int64_t cuda_batched_eigh_calls() {
#ifdef TRP_EXT_WITH_CUDA
  return trp_ext::cuda::cusolver_batched_eigh_calls();
#else
  return 0;
#endif
}

PyObject* cpu_kernels(PyObject* /*self*/, PyObject* /*args*/) {
  return PyUnicode_FromString(trp_ext::cpu::cpu_kernel_isa());
}

PyObject* cpu_vector_bits(PyObject* /*self*/, PyObject* /*args*/) {
  return PyLong_FromLong(trp_ext::fconv_cpu::cpu_kernels().vector_bits);
}

// cpu_winograd, cpu_channel_vectorised, cpu_split_images, cpu_wide_vectors,
// cpu_batched_projection, cuda_pipelined_loads and cuda_batched_eigh: `Name`(mode=None) -> the mode of
// the path switch in force, set first when given ('auto', 'never' or 'always': PathMode's order).
template <trp_ext::PathSwitch& (*Switch)(), const char* Name>
PyObject* path_mode(PyObject* /*self*/, PyObject* args, PyObject* kwargs) {
  using trp_ext::PathMode;
  static const char* const names[] = {"auto", "never", "always"};
  static const char* keywords[] = {"mode", nullptr};
  const char* mode = nullptr;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|z", const_cast<char**>(keywords), &mode)) {
    return nullptr;
  }
  if (mode != nullptr) {
    int found = -1;
    for (int i = 0; i < 3; ++i) {
      if (std::string(mode) == names[i]) found = i;
    }
    if (found < 0) {
      PyErr_Format(PyExc_ValueError, "%s(): mode must be 'auto', 'never' or 'always', got '%s'",
                   Name, mode);
      return nullptr;
    }
    Switch().set(static_cast<PathMode>(found));
  }
  return PyUnicode_FromString(names[static_cast<int>(Switch().get())]);
}

constexpr char kWinogradSwitch[] = "cpu_winograd";
constexpr char kPipelineSwitch[] = "cuda_pipelined_loads";
constexpr char kBatchedEighSwitch[] = "cuda_batched_eigh";
constexpr char kBatchedProjectionSwitch[] = "cpu_batched_projection";
constexpr char kCvSwitch[] = "cpu_channel_vectorised";
constexpr char kSplitSwitch[] = "cpu_split_images";
constexpr char kWideSwitch[] = "cpu_wide_vectors";

// A METH_VARARGS | METH_KEYWORDS function as the PyCFunction its table entry holds.
template <PyObject* (*Function)(PyObject*, PyObject*, PyObject*)>
PyCFunction with_keywords() {
  return reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(Function));
}

// cpu_split_image_calls, cpu_winograd_private_weight_calls and cuda_batched_eigh_calls: the
// library's count as an int.
template <int64_t (*Count)()>
PyObject* call_count(PyObject* /*self*/, PyObject* /*args*/) {
  return PyLong_FromLongLong(Count());
}

PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS,
     "{'cuda': bool, 'torch_version': (major, minor, patch), 'intra_op_parallel': bool} this "
     "library was compiled with."},
    {"cpu_kernels", cpu_kernels, METH_NOARGS,
     "'avx512', 'avx2' or 'portable': the widest instruction set the CPU kernels of this "
     "process run with ('avx512': the factored_conv2d micro-kernel uses AVX-512VL's 32 "
     "registers, the rest AVX2; 'avx2' when the CPU lacks AVX-512F/VL or "
     "ATEN_CPU_CAPABILITY=avx2; portable when it lacks AVX2+FMA or "
     "ATEN_CPU_CAPABILITY=default)."},
    {kWinogradSwitch,
     with_keywords<path_mode<trp_ext::fconv_cpu::winograd_switch, kWinogradSwitch>>(),
     METH_VARARGS | METH_KEYWORDS,
     "cpu_winograd(mode=None) -> str: the CPU factored_conv2d's use of Winograd for 3x3 "
     "stride-1 layers (F(2x2, 3x3) for the channel scheme, F(2, 3) along each axis for the "
     "spatial one), set to mode ('auto', 'never', 'always') when given; returns the mode in "
     "force."},
    {kCvSwitch, with_keywords<path_mode<trp_ext::fconv_cpu::cv_switch, kCvSwitch>>(),
     METH_VARARGS | METH_KEYWORDS,
     "cpu_channel_vectorised(mode=None) -> str: the CPU factored_conv2d's use of its "
     "channel-vectorised path (packed weights, exactly the output positions) for the layers "
     "the direct kernel runs, set to mode ('auto', 'never', 'always') when given; returns the "
     "mode in force."},
    {kSplitSwitch, with_keywords<path_mode<trp_ext::fconv_cpu::split_switch, kSplitSwitch>>(),
     METH_VARARGS | METH_KEYWORDS,
     "cpu_split_images(mode=None) -> str: the CPU factored_conv2d's splitting of an image's "
     "band-path work across threads by channels instead of rows, set to mode ('auto', 'never', "
     "'always') when given; returns the mode in force."},
    {kWideSwitch, with_keywords<path_mode<trp_ext::fconv_cpu::wide_switch, kWideSwitch>>(),
     METH_VARARGS | METH_KEYWORDS,
     "cpu_wide_vectors(mode=None) -> str: the CPU multiply-add loops' (factored_conv2d's "
     "micro-kernels, and lowrank_project's products through them) use of 512-bit vectors on "
     "CPUs with AVX-512 ('auto': where they measured at least 1.5x the 256-bit ones' rate; "
     "'always': on every CPU with AVX-512; 'never': 256-bit), set to mode when given; returns the "
     "mode in force."},
    {"cpu_vector_bits", cpu_vector_bits, METH_NOARGS,
     "cpu_vector_bits() -> int: 512 when the CPU multiply-add loops run on 512-bit vectors now "
     "(see cpu_wide_vectors), else 256."},
    {kPipelineSwitch, with_keywords<path_mode<trp_ext::cuda_pipeline_switch, kPipelineSwitch>>(),
     METH_VARARGS | METH_KEYWORDS,
     "cuda_pipelined_loads(mode=None) -> str: the CUDA factored_conv2d's multi-stage cp.async "
     "loads of its first GEMM (16-bit inputs and weights in channels_last on sm_80 or later), "
     "set to mode ('auto' and 'always': wherever they apply; 'never': the single-buffered "
     "loads) when given; returns the mode in force."},
    {kBatchedEighSwitch,
     with_keywords<path_mode<trp_ext::cuda_batched_eigh_switch, kBatchedEighSwitch>>(),
     METH_VARARGS | METH_KEYWORDS,
     "cuda_batched_eigh(mode=None) -> str: the CUDA lowrank_project's use of cuSOLVER's batched "
     "eigensolver (cusolverDnXsyevBatched) for Gram matrices past its Jacobi kernel (n > 112), "
     "set to mode ('auto' and 'always': wherever the library has it; 'never': "
     "torch.linalg.eigh, which solves such a batch one matrix at a time) when given; returns "
     "the mode in force."},
    {kBatchedProjectionSwitch,
     with_keywords<path_mode<trp_ext::cpu_batched_projection_switch, kBatchedProjectionSwitch>>(),
     METH_VARARGS | METH_KEYWORDS,
     "cpu_batched_projection(mode=None) -> str: whether the CPU lowrank_project runs the CUDA "
     "kernel's batched algorithm, on the CPU twins of its kernels ('always'), instead of its own "
     "per-matrix solver ('auto' and 'never'), set to mode when given; returns the mode in force."},
    {"cuda_batched_eigh_available", cuda_batched_eigh_available, METH_NOARGS,
     "cuda_batched_eigh_available() -> bool: whether this process's cuSOLVER has the batched "
     "eigensolver the CUDA lowrank_project uses (False in builds without the CUDA kernels)."},
    {"cuda_batched_eigh_calls", call_count<cuda_batched_eigh_calls>, METH_NOARGS,
     "cuda_batched_eigh_calls() -> int: the batches the CUDA lowrank_project has solved with "
     "cuSOLVER's batched eigensolver so far (process-wide; 0 in builds without the CUDA "
     "kernels)."},
    {"cpu_split_image_calls", call_count<trp_ext::fconv_cpu::split_image_calls>, METH_NOARGS,
     "cpu_split_image_calls() -> int: the CPU factored_conv2d calls that have split their "
     "images across threads so far (process-wide)."},
    {"cpu_winograd_private_weight_calls",
     call_count<trp_ext::fconv_cpu::winograd_private_weight_calls>, METH_NOARGS,
     "cpu_winograd_private_weight_calls() -> int: the CPU factored_conv2d Winograd calls whose "
     "threads each transformed the weights into their own buffer so far (process-wide)."},
    {"factored_conv2d_below_autograd", trp_ext::factored_conv2d_below_autograd, METH_VARARGS,
     "factored_conv2d_below_autograd(x, w1, w2, bias, stride, padding, dilation, scheme, "
     "activation, residual) -> Tensor: the op below autograd, its arguments in the op's form "
     "(pairs as tuples or lists of two ints); NotImplemented where torch.ops' generic call is "
     "needed (tensor subclasses, torch function modes, arguments of other types)."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "trp_ext compiled kernels", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
