#include "cpu/scratch_pool.h"

#include <atomic>
#include <new>
#include <vector>

namespace trp_ext {
namespace cpu {
namespace {

constexpr int kSmallestClassLog2 = 16;  // kPooledFromBytes
constexpr int kLargestClassLog2 = 24;   // kMaxRetainedBytes
constexpr int kClasses = kLargestClassLog2 - kSmallestClassLog2 + 1;
static_assert(kPooledFromBytes == size_t{1} << kSmallestClassLog2);
static_assert(kMaxRetainedBytes == size_t{1} << kLargestClassLog2);

// The size class of a request, or -1 when it is not pooled.
int size_class(size_t bytes) {
  if (bytes < kPooledFromBytes || bytes > kMaxRetainedBytes) return -1;
  int log2 = kSmallestClassLog2;
  while ((size_t{1} << log2) < bytes) ++log2;
  return log2 - kSmallestClassLog2;
}

size_t class_bytes(int size_class) { return size_t{1} << (size_class + kSmallestClassLog2); }

void* heap_allocate(size_t bytes) {
  return ::operator new(bytes, std::align_val_t{kScratchAlignment});
}

void heap_free(void* block) noexcept {
  ::operator delete(block, std::align_val_t{kScratchAlignment});
}

// What all threads' pools hold, against kMaxRetainedBytesAllThreads.
std::atomic<size_t> retained_all_threads{0};

// Set once the thread's pool is destroyed (at thread exit): a buffer freed after that, by a
// thread_local destructor that runs later, goes straight to the heap.
thread_local bool pool_destroyed = false;

struct ThreadPool {
  std::vector<void*> free_blocks[kClasses];
  size_t retained = 0;

  ~ThreadPool() {
    for (auto& blocks : free_blocks) {
      for (void* block : blocks) heap_free(block);
    }
    retained_all_threads.fetch_sub(retained, std::memory_order_relaxed);
    pool_destroyed = true;
  }
};

ThreadPool* thread_pool() {
  if (pool_destroyed) return nullptr;
  thread_local ThreadPool pool;
  return &pool;
}

}  // namespace

void* scratch_allocate(size_t bytes) {
  const int c = size_class(bytes);
  if (c < 0) return heap_allocate(bytes == 0 ? 1 : bytes);
  if (ThreadPool* pool = thread_pool(); pool != nullptr && !pool->free_blocks[c].empty()) {
    void* block = pool->free_blocks[c].back();
    pool->free_blocks[c].pop_back();
    pool->retained -= class_bytes(c);
    retained_all_threads.fetch_sub(class_bytes(c), std::memory_order_relaxed);
    return block;
  }
  return heap_allocate(class_bytes(c));
}

void scratch_free(void* block, size_t bytes) noexcept {
  if (block == nullptr) return;
  const int c = size_class(bytes);
  ThreadPool* pool = c < 0 ? nullptr : thread_pool();
  if (pool != nullptr && pool->retained + class_bytes(c) <= kMaxRetainedBytes) {
    // Claimed before it is kept, so that threads freeing at once cannot overshoot together.
    const size_t before = retained_all_threads.fetch_add(class_bytes(c), std::memory_order_relaxed);
    if (before + class_bytes(c) <= kMaxRetainedBytesAllThreads) {
      try {
        pool->free_blocks[c].push_back(block);
        pool->retained += class_bytes(c);
        return;
      } catch (const std::bad_alloc&) {
        // no room to note it: free it instead
      }
    }
    retained_all_threads.fetch_sub(class_bytes(c), std::memory_order_relaxed);
  }
  heap_free(block);
}

ScratchArray scratch_array(int64_t count) {
  const size_t bytes = static_cast<size_t>(count) * sizeof(double);
  return ScratchArray(static_cast<double*>(scratch_allocate(bytes)), ScratchDeleter{bytes});
}

}  // namespace cpu
}  // namespace trp_ext
