// BLAS and LAPACK calls from inside an at::parallel_for worker, kept on that worker's thread.
//
// torch switches MKL's dynamic thread adjustment off (at::init_num_threads), so an MKL routine
// called inside an OpenMP parallel region does not fall back to one thread: it opens a nested
// team. Measured on a 2-core Intel Xeon VM: after torch.set_num_threads(1) and (2), MKL's dgesdd
// (at::linalg_svd) called from a lowrank_project worker never returned, its thread spinning in
// MKL's team code while the other worker waited at the region's barrier. The workers already
// share the cores among themselves, so each asks MKL for one thread for the scope of its work.
// MKL's thread-local setting is looked up weakly in the BLAS torch loaded (its C entry point,
// MKL_Set_Num_Threads_Local: the lower-case names are the Fortran ones, which take a pointer);
// other BLAS libraries (OpenBLAS detects the parallel region itself) make this a no-op.
#pragma once

#if defined(__GNUC__)
extern "C" int MKL_Set_Num_Threads_Local(int threads) __attribute__((weak));
#endif

namespace trp_ext {
namespace cpu {

class SequentialBlasScope {
 public:
  SequentialBlasScope() {
#if defined(__GNUC__)
    if (MKL_Set_Num_Threads_Local != nullptr) previous_ = MKL_Set_Num_Threads_Local(1);
#endif
  }
  ~SequentialBlasScope() {
#if defined(__GNUC__)
    // The previous thread-local value; 0 returns the thread to MKL's global setting.
    if (MKL_Set_Num_Threads_Local != nullptr) MKL_Set_Num_Threads_Local(previous_);
#endif
  }
  SequentialBlasScope(const SequentialBlasScope&) = delete;
  SequentialBlasScope& operator=(const SequentialBlasScope&) = delete;

 private:
  int previous_ = 0;
};

}  // namespace cpu
}  // namespace trp_ext
