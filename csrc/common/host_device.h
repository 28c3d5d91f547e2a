// TRP_HOST_DEVICE marks the common/ functions that the CPU kernels and the CUDA kernels share, so
// that both devices run the same code (nvcc compiles them for both; a host compiler sees plain
// inline functions).
#pragma once

#ifdef __CUDACC__
#define TRP_HOST_DEVICE __host__ __device__
#else
#define TRP_HOST_DEVICE
#endif
