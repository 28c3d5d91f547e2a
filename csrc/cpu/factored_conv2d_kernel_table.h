// The kernel table of one build of factored_conv2d_kernels_impl.h's templates (F32 and F64: its
// vector types), for the file that instantiates them. An x86 build includes this after its target
// pragma has ended: the function only takes addresses, so it is compiled for the baseline
// instruction set, and any CPU may call it. Included after factored_conv2d_kernels_impl.h, whose
// templates it names.
#pragma once

#include "cpu/factored_conv2d_kernels.h"

namespace trp_ext {
namespace fconv_cpu {
namespace {

template <class F32, class F64>
CpuKernels kernel_table(const char* isa) {
  CpuKernels k;
  k.f32 = {&tap_conv<F32>,       &build_planes<F32>,    &copy_rows<F32>,
           &winograd_input<F32>, &winograd_output<F32>, &winograd_weights<F32>,
           &cv_conv<F32>,        &cv_output<F32>,
           &winograd_h_input<F32>, &winograd_h_output<F32>, &winograd_w_input<F32>,
           &winograd_w_output<F32>, &winograd_axis_weights<F32>, &winograd_input_direct<F32>};
  k.f64 = {&tap_conv<F64>,       &build_planes<F64>,    &copy_rows<F64>,
           &winograd_input<F64>, &winograd_output<F64>, &winograd_weights<F64>,
           &cv_conv<F64>,        &cv_output<F64>,
           &winograd_h_input<F64>, &winograd_h_output<F64>, &winograd_w_input<F64>,
           &winograd_w_output<F64>, &winograd_axis_weights<F64>, &winograd_input_direct<F64>};
  k.isa = isa;
  return k;
}

}  // namespace
}  // namespace fconv_cpu
}  // namespace trp_ext
