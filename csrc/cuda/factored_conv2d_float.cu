// The fused factored_conv2d kernel's launches for float (see cuda/factored_conv2d_launch.cuh).
#include "cuda/factored_conv2d_launch.cuh"

namespace trp_ext {
namespace fconv_launch {

template bool launch_for_rank<float>(const FconvArgs&, bool, const cudaDeviceProp&, cudaStream_t);

}  // namespace fconv_launch
}  // namespace trp_ext
