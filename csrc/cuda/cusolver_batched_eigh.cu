// See cuda/cusolver_batched_eigh.h.
#include "cuda/cusolver_batched_eigh.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <cusolverDn.h>
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <type_traits>
#include <vector>

namespace trp_ext {
namespace cuda {
namespace {

// The entry points, from the cuSOLVER library already in the process. The batched solver's
// types are written out, not taken from the header: headers older than cuSOLVER 11.7.1 lack its
// declarations, and the extension must still build there (the library then lacks the symbol and
// the caller falls back). Where the header has them, the compiler checks the two agree.
using BufferSizeFn = cusolverStatus_t (*)(cusolverDnHandle_t, cusolverDnParams_t, cusolverEigMode_t,
                                          cublasFillMode_t, int64_t, cudaDataType, const void*, int64_t,
                                          cudaDataType, const void*, cudaDataType, size_t*, size_t*,
                                          int64_t);
using SyevBatchedFn = cusolverStatus_t (*)(cusolverDnHandle_t, cusolverDnParams_t, cusolverEigMode_t,
                                           cublasFillMode_t, int64_t, cudaDataType, void*, int64_t,
                                           cudaDataType, void*, cudaDataType, void*, size_t, void*,
                                           size_t, int*, int64_t);
#if defined(CUSOLVER_VERSION) && CUSOLVER_VERSION >= 11701
static_assert(std::is_same_v<BufferSizeFn, decltype(&cusolverDnXsyevBatched_bufferSize)>,
              "cusolverDnXsyevBatched_bufferSize's signature changed");
static_assert(std::is_same_v<SyevBatchedFn, decltype(&cusolverDnXsyevBatched)>,
              "cusolverDnXsyevBatched's signature changed");
#endif

struct CusolverApi {
  decltype(&cusolverDnCreate) create = nullptr;
  decltype(&cusolverDnDestroy) destroy = nullptr;
  decltype(&cusolverDnSetStream) set_stream = nullptr;
  decltype(&cusolverDnCreateParams) create_params = nullptr;
  BufferSizeFn buffer_size = nullptr;
  SyevBatchedFn syev_batched = nullptr;

  bool complete() const {
    return create != nullptr && destroy != nullptr && set_stream != nullptr &&
           create_params != nullptr && buffer_size != nullptr && syev_batched != nullptr;
  }
};

template <typename F>
void find(void* library, const char* name, F* out) {
  *out = reinterpret_cast<F>(dlsym(library, name));
}

// Only a cuSOLVER already loaded (torch's, by the sonames of CUDA 13's and CUDA 12's): loading one
// by name could bind a system copy that torch's own linalg library would then resolve to, instead
// of the copy torch was built with. Null when none is loaded.
void* loaded_cusolver() {
  for (const char* name : {"libcusolver.so.12", "libcusolver.so.11"}) {
    if (void* library = dlopen(name, RTLD_NOW | RTLD_NOLOAD)) return library;
  }
  return nullptr;
}

// The API, or null. A library that lacks it is final; no library loaded yet is looked for again
// on the next call (torch may load cuSOLVER lazily, on its first linalg call, which the fallback
// then makes).
const CusolverApi* api() {
  static std::mutex mutex;
  static CusolverApi found;
  static bool final_answer = false;
  std::lock_guard<std::mutex> lock(mutex);
  if (!final_answer) {
    if (void* library = loaded_cusolver()) {
      find(library, "cusolverDnCreate", &found.create);
      find(library, "cusolverDnDestroy", &found.destroy);
      find(library, "cusolverDnSetStream", &found.set_stream);
      find(library, "cusolverDnCreateParams", &found.create_params);
      find(library, "cusolverDnXsyevBatched_bufferSize", &found.buffer_size);
      find(library, "cusolverDnXsyevBatched", &found.syev_batched);
      final_answer = true;
    }
  }
  return found.complete() ? &found : nullptr;
}

// A handle and its parameters per thread and device: a cuSOLVER handle belongs to the device
// current when it was made and must not be used by two threads at once. Kept for the thread's
// life, like torch's own handle pool (never destroyed: at exit the library may be gone first).
struct Solver {
  cusolverDnHandle_t handle = nullptr;
  cusolverDnParams_t params = nullptr;
  std::vector<unsigned char> host_work;  // kept between calls, grown as needed
};

Solver* solver_for_current_device(const CusolverApi& f) {
  thread_local std::map<int, Solver> solvers;
  const int device = c10::cuda::current_device();
  auto it = solvers.find(device);
  if (it != solvers.end()) return &it->second;
  Solver s;
  if (f.create(&s.handle) != CUSOLVER_STATUS_SUCCESS) return nullptr;
  if (f.create_params(&s.params) != CUSOLVER_STATUS_SUCCESS) {
    f.destroy(s.handle);
    return nullptr;
  }
  return &solvers.emplace(device, std::move(s)).first->second;
}

std::atomic<int64_t> g_batched_calls{0};

}  // namespace

bool cusolver_batched_eigh_available() { return api() != nullptr; }

int64_t cusolver_batched_eigh_calls() { return g_batched_calls.load(); }

bool cusolver_batched_eigh(const at::Tensor& sym, at::Tensor& values, at::Tensor& vectors,
                           at::Tensor& info) {
  TORCH_CHECK(sym.dim() == 3 && sym.size(1) == sym.size(2) && sym.scalar_type() == at::kDouble &&
                  sym.is_cuda(),
              "cusolver_batched_eigh: expects (B, n, n) float64 on a CUDA device");
  const CusolverApi* f = api();
  if (f == nullptr || sym.size(0) == 0) return false;
  const c10::cuda::CUDAGuard device_guard(sym.device());
  Solver* s = solver_for_current_device(*f);
  if (s == nullptr) return false;
  const int64_t batch = sym.size(0), n = sym.size(1);
  // Overwritten with the eigenvectors, column-major: each matrix's transpose, row-major. The input
  // is symmetric, so its row-major storage is already the column-major matrix cuSOLVER reads.
  at::Tensor work_matrix = sym.clone(at::MemoryFormat::Contiguous);
  at::Tensor work_values = at::empty({batch, n}, sym.options());
  at::Tensor work_info = at::zeros({batch}, sym.options().dtype(at::kInt));
  if (f->set_stream(s->handle, at::cuda::getCurrentCUDAStream().stream()) != CUSOLVER_STATUS_SUCCESS) {
    return false;
  }
  size_t device_bytes = 0, host_bytes = 0;
  if (f->buffer_size(s->handle, s->params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n,
                     CUDA_R_64F, work_matrix.data_ptr(), n, CUDA_R_64F, work_values.data_ptr(),
                     CUDA_R_64F, &device_bytes, &host_bytes, batch) != CUSOLVER_STATUS_SUCCESS) {
    return false;
  }
  // From torch's caching allocator, on this stream: freed for reuse once the call's work is queued.
  const at::Tensor device_work = at::empty({static_cast<int64_t>(std::max<size_t>(device_bytes, 1))},
                                           sym.options().dtype(at::kByte));
  if (s->host_work.size() < host_bytes) s->host_work.resize(host_bytes);
  if (f->syev_batched(s->handle, s->params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n,
                      CUDA_R_64F, work_matrix.data_ptr(), n, CUDA_R_64F, work_values.data_ptr(),
                      CUDA_R_64F, device_work.data_ptr(), device_bytes,
                      host_bytes > 0 ? s->host_work.data() : nullptr, host_bytes,
                      work_info.data_ptr<int>(), batch) != CUSOLVER_STATUS_SUCCESS) {
    return false;
  }
  values = work_values;
  vectors = work_matrix.transpose(1, 2);
  info = work_info;
  g_batched_calls.fetch_add(1);
  return true;
}

}  // namespace cuda
}  // namespace trp_ext
