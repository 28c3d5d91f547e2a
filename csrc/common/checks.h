// Argument checks shared by every op. Each message starts with "<op>(): argument '<name>'" so
// the Python exception names the argument the user got wrong.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <iomanip>
#include <limits>
#include <sstream>
#include <string>

// ValueError: a value or shape is wrong.
#define TRP_CHECK_ARG(cond, op, arg, ...) \
  TORCH_CHECK_VALUE(cond, op, "(): argument '", arg, "' ", __VA_ARGS__)

// TypeError: a dtype is wrong.
#define TRP_CHECK_ARG_TYPE(cond, op, arg, ...) \
  TORCH_CHECK_TYPE(cond, op, "(): argument '", arg, "' ", __VA_ARGS__)

namespace trp_ext {

// `value` with every digit it needs to read back exactly: streamed as is, 1.0000001 reads
// "1", and "must lie in (0, 1], got 1" contradicts itself.
inline std::string exact_number(double value) {
  std::ostringstream out;
  out << std::setprecision(std::numeric_limits<double>::max_digits10) << value;
  return out.str();
}

inline void check_floating(const at::Tensor& t, const char* op, const char* arg) {
  TRP_CHECK_ARG_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, arg,
                     "must be float32 or float64, got ", t.scalar_type());
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* op, const char* arg) {
  TRP_CHECK_ARG(t.dim() == dim, op, arg, "must be ", dim, "-D, got shape ", t.sizes());
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op,
                              const char* arg) {
  TRP_CHECK_ARG(a.device() == b.device(), op, arg, "must be on ", a.device(), ", got ",
                b.device());
}

}  // namespace trp_ext
