// A small SIMT emulator that runs obce's CUDA kernels (cpp/cuda/kernels.cuh) on the CPU, so that their
// logic (indexing, barriers, warp exchanges, atomics, asynchronous copies, thread-block clusters and
// their shared-memory exchanges) is tested where there is no GPU. Only what the kernels use is provided. It
// says nothing about speed, and GPU memory-model subtleties beyond barriers and atomics are not modelled; a
// block that leaves while peers still read its shared memory is caught only for the dynamic part (poisoned at
// exit) and only if the read comes late.
//
// Each block runs on an OS thread of its own; the blocks of a cluster run at the same time, the
// clusters one after another. Within a block, the CUDA threads are coroutines (ucontext): a thread
// runs until it waits at a barrier, then another one runs. `__shared__` variables are function-local
// `static thread_local`s, one copy per block, and a pointer into a peer block's shared memory is the
// same thread-local offset in the peer's OS thread.
#pragma once
#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include <ucontext.h>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __shared__ static thread_local
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
alignas(16) inline thread_local unsigned char simt_dynamic_shared[256 << 10];
#define OBCE_DYNAMIC_SHARED(name) unsigned char *name = simt_dynamic_shared

using std::fma;
using std::isnan;
using std::sqrt;
template <class T> T min(T a, T b) { return b < a ? b : a; }
template <class T> T max(T a, T b) { return a < b ? b : a; }

template <class To, class From> To simt_bits(From x) {
  static_assert(sizeof(To) == sizeof(From));
  To y;
  std::memcpy(&y, &x, sizeof y);
  return y;
}
inline int __float_as_int(float x) { return simt_bits<int>(x); }
inline unsigned __float_as_uint(float x) { return simt_bits<unsigned>(x); }
inline float __uint_as_float(unsigned x) { return simt_bits<float>(x); }
inline long long __double_as_longlong(double x) { return simt_bits<long long>(x); }
inline double __longlong_as_double(long long x) { return simt_bits<double>(x); }

[[noreturn]] inline void simt_deadlock(const char *where) {
  std::fprintf(stderr, "simt: deadlock: %s\n", where);
  std::exit(2);
}

// ---- threads of a block: coroutines ----------------------------------------------------------

class Barrier;
struct SimtCopy {
  void *dst;
  const void *src;
  std::size_t bytes, zfill;
};
struct SimtThread {
  ucontext_t context;
  std::vector<char> stack;
  const Barrier *waiting_on = nullptr;
  unsigned long long generation = 0; // of waiting_on, when the thread arrived
  std::vector<SimtCopy> copies;      // asynchronous copies not yet waited for
  bool done = false;
};
inline thread_local ucontext_t simt_scheduler;
inline thread_local SimtThread *simt_current;

class Barrier {
public:
  explicit Barrier(unsigned count) : count_(count) {}
  // The last thread to arrive runs `last` (if any) before it releases everyone, itself included.
  void wait(void (*last)() = nullptr) {
    simt_current->waiting_on = this;
    simt_current->generation = generation_;
    if (++arrived_ == count_) {
      if (last) last();
      arrived_ = 0;
      ++generation_;
    }
    swapcontext(&simt_current->context, &simt_scheduler);
  }
  bool released(unsigned long long generation) const { return generation != generation_; }

private:
  unsigned count_, arrived_ = 0;
  unsigned long long generation_ = 0;
};

struct SimtWarp {
  Barrier barrier{32};
  std::uint64_t slots[32];
};
struct SimtBlock {
  explicit SimtBlock(unsigned threads) : barrier(threads), votes(threads, 0) {
    for (unsigned w = 0; w < (threads + 31) / 32; ++w) warps.push_back(std::make_unique<SimtWarp>());
  }
  Barrier barrier;
  std::vector<std::unique_ptr<SimtWarp>> warps;
  std::vector<int> votes;
};
inline thread_local SimtBlock *simt_block;
inline thread_local SimtWarp *simt_warp;
inline thread_local std::mt19937 simt_random;

inline void __syncthreads() { simt_block->barrier.wait(); }
inline int __syncthreads_or(int predicate) {
  simt_block->votes[threadIdx.x] = predicate != 0;
  simt_block->barrier.wait();
  int any = 0;
  for (int v : simt_block->votes) any |= v;
  simt_block->barrier.wait(); // nobody votes again before everyone has counted
  return any;
}
inline void __syncwarp(unsigned = 0xffffffffu) { simt_warp->barrier.wait(); }

// Every lane posts its value, then reads lane `source`'s.
template <class V> V simt_exchange(V v, int source) {
  static_assert(sizeof(V) <= sizeof(std::uint64_t));
  const int lane = threadIdx.x % 32;
  std::memcpy(&simt_warp->slots[lane], &v, sizeof v);
  simt_warp->barrier.wait();
  V r;
  std::memcpy(&r, &simt_warp->slots[source], sizeof r);
  simt_warp->barrier.wait();
  return r;
}
template <class V> V __shfl_xor_sync(unsigned, V v, int mask) {
  return simt_exchange(v, (threadIdx.x % 32) ^ mask);
}
template <class V> V __shfl_up_sync(unsigned, V v, unsigned delta) {
  const int lane = threadIdx.x % 32, source = lane - int(delta);
  return simt_exchange(v, source < 0 ? lane : source); // lanes below delta keep their own value
}
inline unsigned __reduce_min_sync(unsigned, unsigned v) {
  for (int mask = 1; mask < 32; mask <<= 1) v = std::min(v, __shfl_xor_sync(0u, v, mask));
  return v;
}
inline int __all_sync(unsigned, int predicate) {
  int all = predicate != 0;
  for (int mask = 1; mask < 32; mask <<= 1) all &= __shfl_xor_sync(0u, all, mask);
  return all;
}

// Asynchronous global-to-shared copies (cp.async) land only when their thread waits for them, so a
// read before the wait sees the old contents. The last `zfill` bytes are zeros, not read.
inline void __pipeline_memcpy_async(void *dst, const void *src, std::size_t bytes, std::size_t zfill = 0) {
  simt_current->copies.push_back({dst, src, bytes, zfill});
}
inline void __pipeline_commit() {}
inline void __pipeline_wait_prior(std::size_t prior) {
  if (prior != 0) simt_deadlock("__pipeline_wait_prior above 0 is not modelled");
  for (const SimtCopy &c : simt_current->copies) {
    std::memcpy(c.dst, c.src, c.bytes - c.zfill);
    std::memset(static_cast<char *>(c.dst) + c.bytes - c.zfill, 0, c.zfill);
  }
  simt_current->copies.clear();
}

// Atomics are global-memory operations too (first_bad), so they are serialized across blocks.
inline std::mutex simt_atomics;
template <class A> A atomicMin(A *a, A v) {
  std::lock_guard<std::mutex> lock(simt_atomics);
  const A old = *a;
  if (v < old) *a = v;
  return old;
}
template <class A> A atomicMax(A *a, A v) {
  std::lock_guard<std::mutex> lock(simt_atomics);
  const A old = *a;
  if (old < v) *a = v;
  return old;
}

// ---- clusters: blocks on OS threads, a barrier across them, shared memory of peers -------------

inline thread_local char simt_anchor; // where this block's thread-local copies are
struct SimtCluster {
  explicit SimtCluster(unsigned blocks) : size(blocks), anchors(blocks) {}
  void wait() { // all blocks of the cluster; called by each block's last arriving thread
    std::unique_lock<std::mutex> lock(mutex);
    const unsigned long long mine = generation;
    if (++arrived == size) {
      arrived = 0;
      ++generation;
      released.notify_all();
    } else if (!released.wait_for(lock, std::chrono::seconds(60), [&] { return generation != mine; })) {
      simt_deadlock("a cluster barrier not every block reached");
    }
  }
  unsigned size;
  std::vector<char *> anchors; // simt_anchor of each block, by rank
  std::mutex mutex;
  std::condition_variable released;
  unsigned arrived = 0;
  unsigned long long generation = 0;
};
inline thread_local SimtCluster *simt_cluster;
inline thread_local unsigned simt_cluster_rank;

#define OBCE_CLUSTERS 1
namespace cooperative_groups {
struct cluster_group {
  unsigned block_rank() const { return simt_cluster_rank; }
  void sync() const {
    simt_block->barrier.wait([] { simt_cluster->wait(); });
  }
  template <class P> P *map_shared_rank(P *p, unsigned rank) const {
    return reinterpret_cast<P *>(reinterpret_cast<char *>(p) - &simt_anchor + simt_cluster->anchors[rank]);
  }
};
inline cluster_group this_cluster() { return {}; }
} // namespace cooperative_groups

// ---- launches ----------------------------------------------------------------------------------

template <class Kernel> inline std::unique_ptr<Kernel> simt_body;
template <class Kernel> void simt_run_thread() {
  (*simt_body<Kernel>)();
  if (!simt_current->copies.empty()) simt_deadlock("a thread ended with asynchronous copies not waited for");
  simt_current->done = true;
}

// A coroutine that will run `entry` on its own stack and then return to the scheduler.
inline std::unique_ptr<SimtThread> simt_new_thread(void (*entry)()) {
  auto thread = std::make_unique<SimtThread>();
  thread->stack.resize(1 << 16);
  getcontext(&thread->context);
  thread->context.uc_stack.ss_sp = thread->stack.data();
  thread->context.uc_stack.ss_size = thread->stack.size();
  thread->context.uc_link = &simt_scheduler;
  makecontext(&thread->context, entry, 0);
  return thread;
}

// Runs one block's threads to completion on this OS thread. Released threads resume in a shuffled
// order, and one warp at a time lags: it runs only when no other thread can, so the others get as
// far ahead of it as the barriers allow. Each launch thus tries other interleavings, the adverse
// ones included.
template <class Kernel> void simt_run_block(unsigned threads_per_block) {
  SimtBlock state(threads_per_block);
  simt_block = &state;
  std::vector<std::unique_ptr<SimtThread>> threads;
  for (unsigned t = 0; t < threads_per_block; ++t)
    threads.push_back(simt_new_thread(simt_run_thread<Kernel>));
  std::vector<unsigned> order(threads_per_block);
  for (unsigned t = 0; t < threads_per_block; ++t) order[t] = t;
  const unsigned n_warps = (threads_per_block + 31) / 32;
  unsigned lagging = simt_random() % n_warps;
  auto run_pass = [&](bool lagging_warp) {
    bool ran = false;
    std::shuffle(order.begin(), order.end(), simt_random);
    for (unsigned t : order) {
      SimtThread &thread = *threads[t];
      if (thread.done || (t / 32 == lagging) != lagging_warp) continue;
      if (thread.waiting_on && !thread.waiting_on->released(thread.generation)) continue;
      thread.waiting_on = nullptr;
      threadIdx = dim3(t);
      simt_warp = state.warps[t / 32].get();
      simt_current = &thread;
      swapcontext(&simt_scheduler, &thread.context);
      ran = true;
    }
    return ran;
  };
  for (;;) {
    if (n_warps > 1 && run_pass(false)) continue;
    if (!run_pass(true)) break;
    lagging = simt_random() % n_warps;
  }
  for (const auto &thread : threads)
    if (!thread->done) simt_deadlock("a block barrier not every thread reached");
}

// kernel<<<grid, block>>>() with clusters of `cluster` blocks along x: calls `kernel` once per
// emulated thread.
template <class Kernel> void simt_launch(dim3 grid, dim3 block, Kernel kernel, unsigned cluster = 1) {
  if (grid.x % cluster != 0) simt_deadlock("grid.x is not a multiple of the cluster size");
  gridDim = grid;
  blockDim = block;
  simt_body<Kernel> = std::make_unique<Kernel>(kernel);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx0 = 0; bx0 < grid.x; bx0 += cluster) {
        SimtCluster group(cluster);
        std::vector<std::thread> blocks;
        for (unsigned rank = 0; rank < cluster; ++rank)
          blocks.emplace_back([&, rank] {
            blockIdx = dim3(bx0 + rank, by, bz);
            simt_cluster = &group;
            simt_cluster_rank = rank;
            group.anchors[rank] = &simt_anchor; // peers map pointers only after a cluster barrier
            simt_random.seed(12345 + (bz * grid.y + by) * grid.x + bx0 + rank);
            simt_run_block<Kernel>(block.x);
            // A block's shared memory ends with it: poison it, and keep it mapped until the whole
            // cluster is done, so that a peer reading it late reads NaN instead of the old values.
            std::memset(simt_dynamic_shared, 0xff, sizeof simt_dynamic_shared);
            group.wait();
          });
        for (auto &b : blocks) b.join();
      }
}
