// Work buffers that a thread keeps between lowrank_project calls.
//
// Every call used to allocate its float64 copies, Gram matrices and eigen workspaces afresh, and
// glibc hands freed blocks of that size back to the kernel (its trim and mmap thresholds), so
// the next call page-faulted them in again: ~1,400-1,800 faults per ResNet-56 spatial cold call,
// 10-13% of its time (bench/RESULTS.md). Blocks from kPooledFromBytes up are instead kept on the
// freeing thread's free lists, by power-of-two size class, up to kMaxRetainedBytes per thread
// and kMaxRetainedBytesAllThreads in all; smaller blocks, which malloc recycles without faults,
// and larger ones go to the heap as before.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace trp_ext {
namespace cpu {

// Blocks of this size and up are pooled: below it glibc serves and keeps them itself.
constexpr size_t kPooledFromBytes = size_t{64} << 10;
// A thread keeps at most this much: a ResNet-56 spatial group (four 192 x 192 matrices, each
// with its float64 copy, Gram and eigen workspace) holds ~6 MiB at once. Larger work, such as a
// ResNet-50 512 x 4608 weight, takes long enough per byte that its faults matter less.
constexpr size_t kMaxRetainedBytes = size_t{16} << 20;
// And all threads together at most this much, so that a many-core machine's intra-op threads
// (torch.set_num_threads(64)) do not keep a gigabyte between calls.
constexpr size_t kMaxRetainedBytesAllThreads = size_t{64} << 20;
// Blocks are 64-byte aligned (a cache line, and any vector load).
constexpr size_t kScratchAlignment = 64;

void* scratch_allocate(size_t bytes);
void scratch_free(void* block, size_t bytes) noexcept;

// A std::allocator that draws on the pool, for std::vector work buffers.
template <typename T>
struct ScratchAllocator {
  using value_type = T;
  ScratchAllocator() noexcept = default;
  template <typename U>
  ScratchAllocator(const ScratchAllocator<U>&) noexcept {}
  T* allocate(size_t count) { return static_cast<T*>(scratch_allocate(count * sizeof(T))); }
  void deallocate(T* block, size_t count) noexcept { scratch_free(block, count * sizeof(T)); }
  template <typename U>
  bool operator==(const ScratchAllocator<U>&) const noexcept { return true; }
  template <typename U>
  bool operator!=(const ScratchAllocator<U>&) const noexcept { return false; }
};

template <typename T>
using ScratchVector = std::vector<T, ScratchAllocator<T>>;

// An uninitialised array from the pool (a std::vector would zero-fill it first).
struct ScratchDeleter {
  size_t bytes = 0;
  void operator()(double* block) const noexcept { scratch_free(block, bytes); }
};
using ScratchArray = std::unique_ptr<double[], ScratchDeleter>;
ScratchArray scratch_array(int64_t count);

}  // namespace cpu
}  // namespace trp_ext
