#include "death_radii.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "../core/line.hpp"
#include "../core/prim.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace obce::cpu {
namespace {

// The distance loops are compiled for several instruction sets, and the widest one the running CPU
// supports is picked once, so one build is fast everywhere without assuming AVX-512. (Feature
// lists rather than arch= levels: GCC inlines across the former only.)
template <class T> using RelaxFn = Nearest<T> (*)(const T *, index_t, const T *, T *, index_t, index_t);
template <class T> using PairPrimFn = void (*)(const T *, index_t, index_t, T *, T *, T *, T *);

#if defined(__x86_64__) && defined(__GNUC__)
#define OBCE_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#define OBCE_AVX2 __attribute__((target("avx2,fma")))
template <class T>
OBCE_AVX512 Nearest<T> relax_avx512(const T *W, index_t dim, const T *p, T *dist, index_t lo, index_t hi) {
  return relax<T, 64>(W, dim, p, dist, lo, hi);
}
template <class T>
OBCE_AVX512 void pair_prim_avx512(const T *W, index_t n, index_t dim, T *D, T *dist, T *closed, T *edges) {
  pair_prim<T, 64>(W, n, dim, D, dist, closed, edges);
}
template <class T>
OBCE_AVX2 Nearest<T> relax_avx2(const T *W, index_t dim, const T *p, T *dist, index_t lo, index_t hi) {
  return relax<T, 32>(W, dim, p, dist, lo, hi);
}
template <class T>
OBCE_AVX2 void pair_prim_avx2(const T *W, index_t n, index_t dim, T *D, T *dist, T *closed, T *edges) {
  pair_prim<T, 32>(W, n, dim, D, dist, closed, edges);
}
#endif
template <class T>
Nearest<T> relax_baseline(const T *W, index_t dim, const T *p, T *dist, index_t lo, index_t hi) {
  return relax<T, 16>(W, dim, p, dist, lo, hi);
}
template <class T>
void pair_prim_baseline(const T *W, index_t n, index_t dim, T *D, T *dist, T *closed, T *edges) {
  pair_prim<T, 16>(W, n, dim, D, dist, closed, edges);
}

enum class Simd { baseline, avx2, avx512 };

struct SimdChoice {
  Simd level;
  std::string problem; // a bad OBCE_SIMD value, said in words; empty when there is none
};

// The widest level the CPU supports, or a lower one asked for in OBCE_SIMD (baseline, avx2, avx512),
// so that every build of the distance loop can be tested on one machine. A bad value is remembered,
// not thrown: the kernels refuse to run with it (check_simd), before any parallel region.
SimdChoice detect_simd() {
  Simd supported = Simd::baseline;
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4"))
    supported = Simd::avx512;
  else if (__builtin_cpu_supports("x86-64-v3"))
    supported = Simd::avx2;
#endif
  const char *asked = std::getenv("OBCE_SIMD");
  if (asked == nullptr || *asked == '\0') return {supported, ""};
  const std::string level(asked);
  for (const auto &[name, wanted] : {std::pair{"baseline", Simd::baseline}, std::pair{"avx2", Simd::avx2},
                                     std::pair{"avx512", Simd::avx512}})
    if (level == name) return {std::min(wanted, supported), ""};
  return {supported, "OBCE_SIMD must be baseline, avx2 or avx512, got '" + level + "'"};
}

// Decided once, when first asked.
const SimdChoice &simd_choice() {
  static const SimdChoice choice = detect_simd();
  return choice;
}

void check_simd() {
  if (!simd_choice().problem.empty()) throw std::invalid_argument(simd_choice().problem);
}

template <class T> struct Kernels {
  RelaxFn<T> relax;
  PairPrimFn<T> pair_prim;
};

template <class T> Kernels<T> pick_kernels() {
  switch (simd_choice().level) {
#if defined(__x86_64__) && defined(__GNUC__)
  case Simd::avx512: return {relax_avx512<T>, pair_prim_avx512<T>};
  case Simd::avx2: return {relax_avx2<T>, pair_prim_avx2<T>};
#endif
  default: return {relax_baseline<T>, pair_prim_baseline<T>};
  }
}

template <class T> const Kernels<T> &kernels() {
  static const Kernels<T> picked = pick_kernels<T>();
  return picked;
}

template <class T> struct RelaxBest {
  Nearest<T> operator()(const T *W, index_t dim, const T *p, T *dist, index_t lo, index_t hi) const {
    return kernels<T>().relax(W, dim, p, dist, lo, hi);
  }
};

// Whether a cloud takes the pair-matrix path (prim.hpp): its matrix (n rounded up to whole tiles,
// squared) must stay in a core's L2 cache, as its mirrored writes stride through it, and its points
// need enough dimensions for the blocked distances to win. Measured on Zen 3 (AVX2, one thread,
// float, n = 150): 1.7x faster at d = 64, 1.4x at d = 32, even at d = 16, slower below; at d = 64,
// 1.3x at n = 600, even at n = 1000.
constexpr index_t pair_matrix_bytes = index_t(1) << 20, pair_least_dim = 32;
template <class T> bool use_pair_matrix(index_t n, index_t dim) {
  return dim >= pair_least_dim && tiled_points(n) * tiled_points(n) * index_t(sizeof(T)) <= pair_matrix_bytes;
}

int thread_count(int requested) { return requested > 0 ? requested : default_threads(); }

int this_thread() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

int threads_here() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// x - x is 0 for every finite x and NaN for NaN and ±inf.
template <class T> bool finite(T x) { return x - x == T(0); }

// Per-thread buffers, grown on demand and reused across the clouds a thread handles, so a thread
// that gets no cloud allocates nothing. For d > 1, `points` holds whole tiles (padding with finite
// values), as relax requires; Prim on implicit distances keeps its distances in `a` and the newest
// point in `b`, and on the pair matrix (`pairs`) its distances and closed marks in `a` and the
// tree's edges in `b`. For 1-D clouds, `points` holds a group of clouds side by side and `a`, `b`
// one cloud's buckets.
template <class T> struct Scratch {
  std::vector<T> points, a, b, pairs;
  void reserve(index_t n_points_values, index_t n_a, index_t n_b, index_t n_pairs = 0) {
    for (auto [v, size] : {std::pair{&points, n_points_values}, {&a, n_a}, {&b, n_b}, {&pairs, n_pairs}})
      if (index_t(v->size()) < size) v->resize(size);
  }
  // (Every pair_stride is at most tiled_points.)
  void reserve_cloud(index_t n, index_t dim) {
    const index_t padded = tiled_points(n);
    reserve(padded * dim, 2 * padded, std::max(padded, dim),
            use_pair_matrix<T>(n, dim) ? padded * padded : 0);
  }
};

// An exception must not leave an OpenMP region (it would terminate the process): the first one is
// kept, the remaining iterations are skipped, and it is thrown again after the region.
class RegionErrors {
public:
  template <class F> void run(F &&f) {
    if (failed_.load(std::memory_order_relaxed)) return;
    try {
      f();
    } catch (...) {
#pragma omp critical(obce_region_errors)
      if (!error_) error_ = std::current_exception();
      failed_.store(true, std::memory_order_relaxed);
    }
  }
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

private:
  std::exception_ptr error_;
  std::atomic<bool> failed_{false};
};

// A call's interruption: `interrupt` is asked on the calling thread (OpenMP's thread 0) at most
// every 50 ms, between clouds, every few milliseconds of Prim steps, and while it waits for the other
// threads; once it says stop, every thread skips the work left and the call throws Interrupted.
class Interruption {
public:
  explicit Interruption(Interrupt interrupt) : interrupt_(interrupt) {}
  // Asks, on the calling thread and when due; on every thread, whether the call stops.
  bool stop() {
    if (interrupt_ != nullptr && this_thread() == 0 && !stopped()) {
      const auto now = std::chrono::steady_clock::now();
      if (now >= next_) {
        next_ = now + period;
        if (interrupt_()) stopped_.store(true, std::memory_order_relaxed);
      }
    }
    return stopped();
  }
  bool stopped() const { return stopped_.load(std::memory_order_relaxed); }
  void rethrow() const {
    if (stopped()) throw Interrupted();
  }
  bool asks() const { return interrupt_ != nullptr; }

private:
  static constexpr std::chrono::milliseconds period{50};
  Interrupt interrupt_;
  std::chrono::steady_clock::time_point next_ = std::chrono::steady_clock::now() + period;
  std::atomic<bool> stopped_{false};
};

// Where the threads of a region meet when their share of the clouds is done. Thread 0 keeps asking
// the interruption until the others are there too: only it may ask, and without this it would wait
// at the region's end while another thread runs on (one long cloud, or the tail of a batch).
class FinishLine {
public:
  void cross(Interruption &interruption) {
    const int n = threads_here();
    if (done_.fetch_add(1, std::memory_order_acq_rel) + 1 == n) {
      std::lock_guard<std::mutex> lock(mutex_); // after the count: a waiter is past its check or asleep
      arrived_.notify_one();
      return;
    }
    if (this_thread() != 0 || !interruption.asks()) return;
    auto all_there = [&] { return done_.load(std::memory_order_acquire) == n; };
    // Most waits are one cloud's tail, shorter than a wake-up from sleep: spin through those.
    const auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(100);
    while (!all_there() && std::chrono::steady_clock::now() < spin_until) std::this_thread::yield();
    std::unique_lock<std::mutex> lock(mutex_);
    while (!arrived_.wait_for(lock, std::chrono::milliseconds(10), all_there)) {
      lock.unlock(); // asking may run Python: the last thread must be able to notify meanwhile
      if (interruption.stop()) return;
      lock.lock();
    }
  }

private:
  std::atomic<int> done_{0};
  std::mutex mutex_;
  std::condition_variable arrived_;
};

// Prim steps between two looks at the interruption in a single cloud: about 2^22 point-dimensions of
// work, a few milliseconds whatever the cloud's size (a look is a clock read at most).
index_t steps_per_look(index_t n, index_t dim) {
  return std::max<index_t>(1, (index_t(1) << 22) / (n * dim));
}

// Copies cloud c into s.points in the tiled layout of prim.hpp (for dim 1, plainly contiguous).
// False if a value is not finite.
template <class T> bool gather(const CloudView<T> &v, index_t c, Scratch<T> &s) {
  bool ok = true;
  const T *src = v.cloud(c);
  T *dst = s.points.data();
  for (index_t k = 0; k < v.dim; ++k) {
    const T *col = src + k * v.dim_stride;
    for (index_t i = 0; i < v.n_points; ++i) {
      const T x = col[i * v.point_stride];
      dst[tiled(i, k, v.dim)] = x;
      ok &= finite(x);
    }
  }
  return ok;
}

// 1-D clouds are gathered in groups: in the (n_points, n_neurons) layout the group's values for one
// input share a cache line, read once for all of them. Column by column, a large power-of-two row
// stride would also map every row of a column to the same L1 set.
constexpr index_t line_group = 16;

// Copies clouds [c0, c0 + count) into s.points, cloud g at g * n_points, and flags the finite ones.
template <class T>
void gather_lines(const CloudView<T> &v, index_t c0, index_t count, Scratch<T> &s, bool *finite_cloud) {
  const index_t n = v.n_points;
  T *dst = s.points.data();
  std::fill(finite_cloud, finite_cloud + count, true);
  for (index_t i = 0; i < n; ++i) {
    const T *row = v.data + i * v.point_stride + c0 * v.cloud_stride;
    for (index_t g = 0; g < count; ++g) {
      const T x = row[g * v.cloud_stride];
      dst[g * n + i] = x;
      finite_cloud[g] &= finite(x);
    }
  }
}

template <class T> T line_death_radius(T *x, index_t n, Scratch<T> &s) {
  return max_gap(x, n, s.a.data(), s.b.data());
}

// Prim's tree edges (squared lengths) of the cloud in s.points, one thread.
template <class T, class OnEdge>
void serial_prim(Scratch<T> &s, index_t n, index_t dim, Interruption &interruption, OnEdge on_edge) {
  if (!use_pair_matrix<T>(n, dim)) {
    const index_t look = steps_per_look(n, dim);
    index_t until_look = look;
    prim(s.points.data(), n, dim, s.a.data(), s.b.data(), RelaxBest<T>{}, [&](T d2) {
      on_edge(d2);
      if (--until_look == 0) {
        until_look = look;
        if (interruption.stop()) throw Interrupted();
      }
    });
    return;
  }
  T *dist = s.a.data(), *closed = dist + tiled_points(n);
  kernels<T>().pair_prim(s.points.data(), n, dim, s.pairs.data(), dist, closed, s.b.data());
  for (index_t e = 0; e + 1 < n; ++e) on_edge(s.b[e]);
}

// Prim's algorithm on one large cloud with the points split among the threads of the enclosing
// parallel region: each step every thread relaxes its own points, then all agree on the nearest.
// Points [0, n - 1) are shared out in whole tiles; point n - 1 is the root.
template <class T, class OnEdge>
void parallel_prim(T *W, index_t n, index_t dim, T *dist, std::vector<Nearest<T>> &candidates,
                   std::vector<T> &p, Interruption &interruption, OnEdge on_edge) {
#ifdef _OPENMP
  const int t = omp_get_thread_num(), n_threads = omp_get_num_threads();
#else
  const int t = 0, n_threads = 1;
#endif
  auto share_start = [&](int r) {
    return r == n_threads ? n - 1 : (n - 1) * r / n_threads / tile_points * tile_points;
  };
  const index_t lo = share_start(t), hi = share_start(t + 1), look = steps_per_look(n, dim);
  index_t end = hi; // this thread's active points are [lo, end)
  copy_point(W, dim, n - 1, p.data());
  std::fill(dist + lo, dist + hi, std::numeric_limits<T>::infinity());
  for (index_t step = 0; step + 1 < n; ++step) {
    if (t == 0 && step % look == 0) interruption.stop();
    candidates[t] = kernels<T>().relax(W, dim, p.data(), dist, lo, end);
#pragma omp barrier
    // Only thread 0 writes the flag, before this barrier, and the next barrier comes before its next
    // write: every thread reads the same value here, so all leave at the same step.
    if (interruption.stopped()) break;
    int owner = 0;
    for (int r = 1; r < n_threads; ++r) {
      const auto &c = candidates[r], &o = candidates[owner];
      if (c.index >= 0 && (o.index < 0 || c.dist2 < o.dist2)) owner = r;
    }
    const Nearest<T> nearest = candidates[owner];
    if (t == 0) on_edge(nearest.dist2);
    copy_point(W, dim, nearest.index, p.data());
#pragma omp barrier
    if (t == owner) swap_remove(W, dim, dist, nearest.index, end--);
  }
}

// A cloud is split over threads only when each Prim step has enough work (points × dimensions) to
// dwarf the step's two barriers, and only when a thread count is asked for (n_threads > 1, not the
// default): on a busy machine a barrier can wait a whole scheduler time slice, every step (a cloud
// of 2500 points in 105 dimensions took 10 s on two threads beside another busy process, against
// 0.03 s on one). Several clouds share no barrier: they are spread over all threads by default.
constexpr index_t split_cloud_points = 2048, split_cloud_work = index_t(1) << 18;

template <class T, class PerCloud, class BigCloud>
index_t for_each_cloud(const CloudView<T> &v, int n_threads, Interruption &interruption, PerCloud per_cloud,
                       BigCloud big_cloud) {
  const int nt = thread_count(n_threads);
  index_t first_bad = std::numeric_limits<index_t>::max();
  if (v.dim > 1 && n_threads > 1 && v.n_clouds < nt && v.n_points >= split_cloud_points &&
      v.n_points * v.dim >= split_cloud_work) {
    Scratch<T> s;
    s.reserve_cloud(v.n_points, v.dim);
    std::vector<Nearest<T>> candidates(nt);
    std::vector<std::vector<T>> p(nt, std::vector<T>(v.dim));
    for (index_t c = 0; c < v.n_clouds && !interruption.stopped(); ++c) {
      if (!gather(v, c, s)) {
        first_bad = std::min(first_bad, c);
        continue;
      }
#pragma omp parallel num_threads(nt)
      big_cloud(c, s, candidates, p[this_thread()]);
    }
  } else {
    RegionErrors errors;
    FinishLine finish_line;
    // No more threads than pieces of work: an idle one only costs its start.
    const index_t pieces = v.dim == 1 ? (v.n_clouds + line_group - 1) / line_group : v.n_clouds;
    const int region_threads = int(std::clamp<index_t>(pieces, 1, nt));
#pragma omp parallel num_threads(region_threads) reduction(min : first_bad)
    {
      Scratch<T> s;
      if (v.dim == 1) {
        const index_t group = std::min(line_group, v.n_clouds);
        bool finite_cloud[line_group];
#pragma omp for schedule(dynamic, 1) nowait
        for (index_t c0 = 0; c0 < v.n_clouds; c0 += line_group) {
          if (interruption.stop()) continue;
          errors.run([&] {
            s.reserve(group * v.n_points, v.n_points, v.n_points);
            const index_t count = std::min(line_group, v.n_clouds - c0);
            gather_lines(v, c0, count, s, finite_cloud);
            for (index_t g = 0; g < count; ++g) {
              if (interruption.stop()) break; // a group of large clouds takes long: look before each
              if (finite_cloud[g])
                per_cloud(c0 + g, s.points.data() + g * v.n_points, s);
              else
                first_bad = std::min(first_bad, c0 + g);
            }
          });
        }
      } else {
#pragma omp for schedule(dynamic, 1) nowait
        for (index_t c = 0; c < v.n_clouds; ++c) {
          if (interruption.stop()) continue;
          errors.run([&] {
            s.reserve_cloud(v.n_points, v.dim);
            if (gather(v, c, s))
              per_cloud(c, s.points.data(), s);
            else
              first_bad = std::min(first_bad, c);
          });
        }
      }
      finish_line.cross(interruption);
    }
    errors.rethrow();
  }
  return first_bad == std::numeric_limits<index_t>::max() ? -1 : first_bad;
}

// The first of `count` rows of `row_length` ascending deaths of clouds of `dim` dimensions that is
// out_of_range, or -1.
template <class T> index_t first_out_of_range(const T *rows, index_t count, index_t row_length, index_t dim) {
  const T least = least_precise_death<T>(dim);
  for (index_t c = 0; c < count; ++c) {
    const T *row = rows + c * row_length;
    if (out_of_range(row[0], row[row_length - 1], least)) return c;
  }
  return -1;
}

} // namespace

template <class T> Findings death_radii(const CloudView<T> &v, T *out, int n_threads, Interrupt interrupt) {
  check_simd();
  const index_t n = v.n_points, dim = v.dim;
  std::fill(out, out + v.n_clouds, std::numeric_limits<T>::quiet_NaN());
  Interruption interruption(interrupt);
  const index_t first_bad = for_each_cloud(
      v, n_threads, interruption,
      [&](index_t c, T *points, Scratch<T> &s) {
        if (dim == 1) {
          out[c] = line_death_radius(points, n, s);
          return;
        }
        T longest = 0;
        serial_prim(s, n, dim, interruption, [&](T d2) { longest = std::max(longest, d2); });
        out[c] = std::sqrt(longest);
      },
      [&](index_t c, Scratch<T> &s, std::vector<Nearest<T>> &candidates, std::vector<T> &p) {
        T longest = 0;
        parallel_prim(s.points.data(), n, dim, s.a.data(), candidates, p, interruption,
                      [&](T d2) { longest = std::max(longest, d2); });
        if (this_thread() == 0) out[c] = std::sqrt(longest);
      });
  interruption.rethrow();
  return {first_bad, first_out_of_range(out, v.n_clouds, 1, dim)};
}

template <class T> Findings h0_deaths(const CloudView<T> &v, T *out, int n_threads, Interrupt interrupt) {
  check_simd();
  const index_t n = v.n_points, dim = v.dim;
  std::fill(out, out + v.n_clouds * (n - 1), std::numeric_limits<T>::quiet_NaN());
  auto finish = [&](T *row) {
    for (index_t i = 0; i + 1 < n; ++i) row[i] = std::sqrt(row[i]);
    std::sort(row, row + n - 1);
  };
  Interruption interruption(interrupt);
  const index_t first_bad = for_each_cloud(
      v, n_threads, interruption,
      [&](index_t c, T *points, Scratch<T> &s) {
        T *row = out + c * (n - 1);
        if (dim == 1) {
          sorted_gaps(points, n, row);
          return;
        }
        index_t e = 0;
        serial_prim(s, n, dim, interruption, [&](T d2) { row[e++] = d2; });
        finish(row);
      },
      [&](index_t c, Scratch<T> &s, std::vector<Nearest<T>> &candidates, std::vector<T> &p) {
        T *row = out + c * (n - 1);
        index_t e = 0;
        parallel_prim(s.points.data(), n, dim, s.a.data(), candidates, p, interruption,
                      [&](T d2) { row[e++] = d2; });
        if (this_thread() == 0) finish(row);
      });
  interruption.rethrow();
  return {first_bad, first_out_of_range(out, v.n_clouds, n - 1, dim)};
}

int default_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

const char *simd_level() {
  if (!simd_choice().problem.empty()) return simd_choice().problem.c_str();
  switch (simd_choice().level) {
  case Simd::avx512: return "x86-64-v4 (AVX-512)";
  case Simd::avx2: return "x86-64-v3 (AVX2)";
  default: return "baseline";
  }
}

bool has_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

template Findings death_radii<float>(const CloudView<float> &, float *, int, Interrupt);
template Findings death_radii<double>(const CloudView<double> &, double *, int, Interrupt);
template Findings h0_deaths<float>(const CloudView<float> &, float *, int, Interrupt);
template Findings h0_deaths<double>(const CloudView<double> &, double *, int, Interrupt);

} // namespace obce::cpu
