// See cuda/cusolver_batched_eigh.h.
#include "cuda/cusolver_batched_eigh.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cusolverDn.h>
#include <dlfcn.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <vector>

namespace trp_ext {
namespace cuda {
namespace {

// The entry points, from the cuSOLVER library already in the process (decltype only names the
// header's declarations: nothing here links against them).
struct CusolverApi {
  decltype(&cusolverDnCreate) create = nullptr;
  decltype(&cusolverDnSetStream) set_stream = nullptr;
  decltype(&cusolverDnCreateParams) create_params = nullptr;
  decltype(&cusolverDnXsyevBatched_bufferSize) buffer_size = nullptr;
  decltype(&cusolverDnXsyevBatched) syev_batched = nullptr;

  bool complete() const {
    return create != nullptr && set_stream != nullptr && create_params != nullptr &&
           buffer_size != nullptr && syev_batched != nullptr;
  }
};

template <typename F>
void find(void* library, const char* name, F* out) {
  *out = reinterpret_cast<F>(dlsym(library, name));
}

CusolverApi look_up() {
  CusolverApi api;
  // The sonames of CUDA 13's and CUDA 12's cuSOLVER. First only a copy already loaded (torch's:
  // the same library its own linalg calls use), then one the loader finds by name.
  static const char* const kNames[] = {"libcusolver.so.12", "libcusolver.so.11"};
  void* library = nullptr;
  for (int flags : {RTLD_NOW | RTLD_NOLOAD, RTLD_NOW | RTLD_LOCAL}) {
    for (const char* name : kNames) {
      if ((library = dlopen(name, flags)) != nullptr) break;
    }
    if (library != nullptr) break;
  }
  if (library == nullptr) return api;
  find(library, "cusolverDnCreate", &api.create);
  find(library, "cusolverDnSetStream", &api.set_stream);
  find(library, "cusolverDnCreateParams", &api.create_params);
  find(library, "cusolverDnXsyevBatched_bufferSize", &api.buffer_size);
  find(library, "cusolverDnXsyevBatched", &api.syev_batched);
  return api;
}

// Found once; a miss is looked up again on the next call (torch may load cuSOLVER lazily, on
// its first linalg call, which the fallback then makes).
const CusolverApi* api() {
  static std::mutex mutex;
  static CusolverApi found;
  std::lock_guard<std::mutex> lock(mutex);
  if (!found.complete()) found = look_up();
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
  if (f.create_params(&s.params) != CUSOLVER_STATUS_SUCCESS) return nullptr;
  return &solvers.emplace(device, std::move(s)).first->second;
}

}  // namespace

bool cusolver_batched_eigh_available() { return api() != nullptr; }

bool cusolver_batched_eigh(const at::Tensor& sym, at::Tensor& values, at::Tensor& vectors,
                           at::Tensor& info) {
  TORCH_CHECK(sym.dim() == 3 && sym.size(1) == sym.size(2) && sym.scalar_type() == at::kDouble &&
                  sym.is_cuda(),
              "cusolver_batched_eigh: expects (B, n, n) float64 on a CUDA device");
  const CusolverApi* f = api();
  if (f == nullptr || sym.size(0) == 0) return false;
  Solver* s = solver_for_current_device(*f);
  if (s == nullptr) return false;
  const int64_t batch = sym.size(0), n = sym.size(1);
  // Overwritten with the eigenvectors, column-major: each matrix's transpose, row-major. The input
  // is symmetric, so its row-major storage is already the column-major matrix cuSOLVER reads.
  at::Tensor work_matrix = sym.contiguous().clone();
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
  return true;
}

}  // namespace cuda
}  // namespace trp_ext
