// A small SIMT emulator that runs obce's CUDA kernels (cpp/cuda/kernels.cuh) on the CPU, so that their
// logic (indexing, barriers, warp exchanges, atomics) is tested where there is no GPU. The blocks of
// a launch run one after another, so `__shared__` variables can be function statics. Only what the kernels
// use is provided. It says nothing about speed, and GPU memory-model subtleties beyond barriers and atomics
// are not modelled.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include <ucontext.h>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
inline dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
alignas(16) inline unsigned char simt_dynamic_shared[1 << 20];
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

// Emulated threads are coroutines (ucontext) on one OS thread: a thread runs until it waits at a
// barrier, then another one runs. No data races in the emulator itself, the same schedule on every
// run (fixed seed), and a barrier that not every thread reaches is reported instead of hanging.
class Barrier;
struct SimtThread {
  ucontext_t context;
  std::vector<char> stack;
  const Barrier *waiting_on = nullptr;
  unsigned long long generation = 0; // of waiting_on, when the thread arrived
  bool done = false;
};
inline ucontext_t simt_scheduler;
inline SimtThread *simt_current;

class Barrier {
public:
  explicit Barrier(unsigned count) : count_(count) {}
  void wait() {
    simt_current->waiting_on = this;
    simt_current->generation = generation_;
    if (++arrived_ == count_) { // the last one releases everyone, itself included
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
inline SimtBlock *simt_block;
inline SimtWarp *simt_warp;
inline std::mt19937 simt_random(12345);

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
inline int __all_sync(unsigned, int predicate) {
  int all = predicate != 0;
  for (int mask = 1; mask < 32; mask <<= 1) all &= __shfl_xor_sync(0u, all, mask);
  return all;
}
// Threads switch only at barriers, so a read-modify-write is atomic as it stands.
template <class A> A atomicMin(A *a, A v) {
  const A old = *a;
  if (v < old) *a = v;
  return old;
}
template <class A> A atomicMax(A *a, A v) {
  const A old = *a;
  if (old < v) *a = v;
  return old;
}

template <class Kernel> inline std::unique_ptr<Kernel> simt_body;
template <class Kernel> void simt_run_thread() {
  (*simt_body<Kernel>)();
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

// kernel<<<grid, block>>>(): calls `kernel` once per emulated thread, block after block.
template <class Kernel> void simt_launch(dim3 grid, dim3 block, Kernel kernel) {
  gridDim = grid;
  blockDim = block;
  simt_body<Kernel> = std::make_unique<Kernel>(kernel);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        SimtBlock state(block.x);
        simt_block = &state;
        blockIdx = dim3(bx, by, bz);
        std::vector<std::unique_ptr<SimtThread>> threads;
        for (unsigned t = 0; t < block.x; ++t) threads.push_back(simt_new_thread(simt_run_thread<Kernel>));
        // Released threads resume in a shuffled order, and one warp at a time lags: it runs only when
        // no other thread can, so the others get as far ahead of it as the barriers allow. Each run
        // thus tries other interleavings, the adverse ones included.
        std::vector<unsigned> order(block.x);
        for (unsigned t = 0; t < block.x; ++t) order[t] = t;
        const unsigned n_warps = (block.x + 31) / 32;
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
          if (!thread->done) {
            std::fprintf(stderr, "simt: deadlock in block (%u, %u, %u): a barrier not every thread reached\n",
                         bx, by, bz);
            std::exit(2);
          }
      }
}
