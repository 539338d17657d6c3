// The CUDA kernels: device code only, no runtime calls, so that the tests can also run it on the CPU
// through a small SIMT emulator (tests/simt). The launches are in death_radii.cu.
#pragma once
#include <algorithm>
#include <limits>

#include "../core/cloud_view.hpp"
#include "../core/line.hpp"

// Thread-block clusters (Hopper and later; the emulator supplies its own).
#if !defined(OBCE_CLUSTERS) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#include <cooperative_groups.h>
#define OBCE_CLUSTERS 1
#endif

// Asynchronous global-to-shared copies: cp.async on sm_80+, plain copies before (the emulator
// supplies its own).
#ifdef __CUDACC__
#include <cuda_pipeline.h>
#endif

// The launch's dynamic shared memory (the emulator supplies its own).
#ifndef OBCE_DYNAMIC_SHARED
#define OBCE_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace obce::cuda {

constexpr unsigned kFullMask = 0xffffffffu;

template <class T> __device__ T infinity() { return std::numeric_limits<T>::infinity(); }
template <class T> __device__ bool finite(T x) { return x - x == T(0); }

// Order-preserving unsigned keys: for finite a and b, a < b exactly when key(a) < key(b) (and -0 <
// +0), so a bucket's extremes take one branch-free integer atomic each. No finite value has key 0
// or the all-ones key, which mark "none".
template <class T> struct Keys;
template <> struct Keys<float> {
  using type = unsigned;
  static __device__ unsigned of(float x) {
    const unsigned bits = __float_as_uint(x);
    return bits ^ (bits >> 31 ? 0xffffffffu : 0x80000000u);
  }
  static __device__ float value(unsigned k) {
    return __uint_as_float(k ^ (k >> 31 ? 0x80000000u : 0xffffffffu));
  }
};
template <> struct Keys<double> {
  using type = unsigned long long;
  static __device__ unsigned long long of(double x) {
    const unsigned long long bits = __double_as_longlong(x);
    return bits ^ (bits >> 63 ? ~0ull : 1ull << 63);
  }
  static __device__ double value(unsigned long long k) {
    return __longlong_as_double(k ^ (k >> 63 ? 1ull << 63 : ~0ull));
  }
};
template <class T> using key_t = typename Keys<T>::type;

template <class T> __device__ T warp_min(T x) {
  for (int o = 16; o; o >>= 1) x = min(x, __shfl_xor_sync(kFullMask, x, o));
  return x;
}
template <class T> __device__ T warp_max(T x) {
  for (int o = 16; o; o >>= 1) x = max(x, __shfl_xor_sync(kFullMask, x, o));
  return x;
}

// first_bad is null when the caller does not check (the cloud's NaN result is all it gets).
inline __device__ void report_bad(unsigned long long *first_bad, index_t c) {
  if (first_bad) atomicMin(first_bad, static_cast<unsigned long long>(c));
}

// ---- 1-D clouds: the bucket maximum gap of obce::max_gap, one warp per cloud --------------------

// λ of the n values x[i * stride] by one warp, with 2n keys of bucket scratch. Returns false
// (writing nothing) when a value is not finite.
template <class T>
__device__ bool warp_max_gap(const T *x, index_t stride, index_t n, key_t<T> *bucket_min, T *out) {
  using K = key_t<T>;
  const int lane = threadIdx.x % 32;
  T lo = infinity<T>(), hi = -infinity<T>();
  bool ok = true;
  for (index_t i = lane; i < n; i += 32) {
    const T xi = x[i * stride];
    ok &= finite(xi);
    lo = min(lo, xi);
    hi = max(hi, xi);
  }
  if (!__all_sync(kFullMask, ok)) return false;
  lo = warp_min(lo);
  hi = warp_max(hi);
  if (!(hi > lo)) {
    if (lane == 0) *out = T(0);
    return true;
  }
  K *bucket_max = bucket_min + n;
  for (index_t b = lane; b < n; b += 32) {
    bucket_min[b] = ~K(0);
    bucket_max[b] = 0;
  }
  __syncwarp();
  with_bucket_scale(lo, hi, n, [&](auto scale, decltype(scale) factor) {
    using C = decltype(scale);
    for (index_t i = lane; i < n; i += 32) {
      const T xi = x[i * stride];
      const index_t b = min(n - 1, index_t((C(xi) * factor - C(lo) * factor) * scale));
      const K key = Keys<T>::of(xi);
      atomicMin(bucket_min + b, key);
      atomicMax(bucket_max + b, key);
    }
  });
  __syncwarp();

  // Each lane scans a contiguous run of buckets; the largest key of all buckets before its run (an
  // exclusive max-scan over lanes) is the top of the previous non-empty bucket.
  const index_t run = (n + 31) / 32, b0 = min(n, lane * run), b1 = min(n, b0 + run);
  K run_max = 0;
  for (index_t b = b0; b < b1; ++b) run_max = max(run_max, bucket_max[b]);
  for (int o = 1; o < 32; o <<= 1) {
    const K y = __shfl_up_sync(kFullMask, run_max, o);
    if (lane >= o) run_max = max(run_max, y);
  }
  K prev = __shfl_up_sync(kFullMask, run_max, 1);
  if (lane == 0) prev = 0;
  T gap = 0;
  for (index_t b = b0; b < b1; ++b) {
    if (bucket_min[b] <= bucket_max[b]) {
      if (prev) gap = max(gap, Keys<T>::value(bucket_min[b]) - Keys<T>::value(prev));
      prev = bucket_max[b];
    }
  }
  gap = warp_max(gap);
  if (lane == 0) *out = gap;
  return true;
}

constexpr int kLineWarps = 8;   // warps per block in the 1-D kernels
constexpr int kTileClouds = 32; // clouds per block in the tiled kernel
constexpr int kTileStride = 33; // padded: a warp reading one cloud's column hits 32 banks

// Small 1-D clouds: a block first copies 32 neighbouring clouds into shared memory with coalesced
// reads (along whichever axis is contiguous), then each warp takes clouds from the tile. In the
// (n_points, n_neurons) layout a warp reading one column from global memory would touch a
// different row, and sector, for every value.
// Six blocks an SM, not four (56 registers allowed four: ncu on the H200 found the kernel waiting on
// its tile loads at 50 % occupancy; a block works only once its whole tile is in): 40 registers,
// no spills in double, 4 bytes in float. Turing SMs hold 1024 threads: four blocks there.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define OBCE_LINE_TILE_BLOCKS 4
#else
#define OBCE_LINE_TILE_BLOCKS 6
#endif
template <class T>
__global__ void __launch_bounds__(kLineWarps * 32, OBCE_LINE_TILE_BLOCKS)
    line_tile_kernel(CloudView<T> v, T *out, unsigned long long *first_bad) {
  OBCE_DYNAMIC_SHARED(shared_raw);
  const index_t n = v.n_points, c0 = index_t(blockIdx.x) * kTileClouds;
  const int clouds_here = int(min(index_t(kTileClouds), v.n_clouds - c0));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_warps = blockDim.x / 32;
  T *tile = reinterpret_cast<T *>(shared_raw); // tile[i * kTileStride + cloud]
  key_t<T> *buckets = reinterpret_cast<key_t<T> *>(tile + n * kTileStride) + warp * 2 * n;
  // Copies straight into shared memory, all in flight at once and none holding a register: a loop
  // of load-then-store (what the compiler made of the side-by-side loop) kept one load in flight
  // per thread, so a block waited n / 8 memory latencies for its tile (ncu, H200: warps stalled on
  // global loads at 11 % of the memory bandwidth). Plain 2-D loops: a flat index split by n would
  // cost a 64-bit division per value.
  if (v.point_stride == 1 && v.cloud_stride != 1) { // each cloud contiguous: a warp reads whole clouds
    for (int cloud = warp; cloud < clouds_here; cloud += n_warps) {
      const T *src = v.cloud(c0 + cloud);
      for (index_t i = lane; i < n; i += 32)
        __pipeline_memcpy_async(&tile[i * kTileStride + cloud], &src[i], sizeof(T));
    }
  } else if (lane < clouds_here) { // clouds side by side: a warp reads one point of each cloud
    const T *src = v.cloud(c0 + lane);
    for (index_t i = warp; i < n; i += n_warps)
      __pipeline_memcpy_async(&tile[i * kTileStride + lane], &src[i * v.point_stride], sizeof(T));
  }
  __pipeline_commit();
  __pipeline_wait_prior(0);
  __syncthreads();
  for (int cloud = warp; cloud < clouds_here; cloud += n_warps) {
    if (!warp_max_gap(tile + cloud, index_t(kTileStride), n, buckets, out + c0 + cloud) && lane == 0) {
      report_bad(first_bad, c0 + cloud);
      out[c0 + cloud] = std::numeric_limits<T>::quiet_NaN();
    }
    __syncwarp();
  }
}

// Large 1-D clouds, straight from global memory: warps of a block take neighbouring clouds.
// Buckets live in shared memory, or in `global_buckets` when a cloud has too many points.
template <class T>
__global__ void line_death_radii_kernel(CloudView<T> v, T *out, unsigned long long *first_bad,
                                        key_t<T> *global_buckets) {
  OBCE_DYNAMIC_SHARED(shared_raw);
  const int warp = threadIdx.x / 32;
  const index_t c = index_t(blockIdx.x) * (blockDim.x / 32) + warp;
  if (c >= v.n_clouds) return;
  const index_t n = v.n_points;
  key_t<T> *buckets =
      global_buckets ? global_buckets + c * 2 * n : reinterpret_cast<key_t<T> *>(shared_raw) + warp * 2 * n;
  if (!warp_max_gap(v.cloud(c), v.point_stride, n, buckets, out + c) && threadIdx.x % 32 == 0) {
    report_bad(first_bad, c);
    out[c] = std::numeric_limits<T>::quiet_NaN();
  }
}

// ---- d-dimensional clouds: Prim's algorithm, one block or one thread-block cluster per cloud ----
//
// A cloud's points are split among the `cluster` blocks of its cluster (Hopper and later; one
// block elsewhere). Each block keeps its points' coordinates (coordinate-major, conflict-free
// reads) and tree distances in shared memory; every step each block finds its nearest point, the
// blocks exchange their candidates through distributed shared memory, and all agree on the winner.
// Candidates are double-buffered, so one cluster barrier per step suffices.
template <class T> struct Candidate {
  T dist2;
  index_t index; // global point index; larger than any index when the block has none left
};

// Room left for the kernels' static shared memory (prim_matrix_kernel's 64 candidates the most)
// when sizing their dynamic shared memory.
constexpr size_t kStaticShared = 1024;
static_assert(64 * sizeof(Candidate<double>) <= kStaticShared, "static shared memory outgrew its room");

template <class T> __device__ bool better(const Candidate<T> &a, const Candidate<T> &b) {
  return a.dist2 < b.dist2 || (a.dist2 == b.dist2 && a.index < b.index);
}

template <class T> __device__ Candidate<T> warp_best(Candidate<T> c) {
  for (int o = 16; o; o >>= 1) {
    Candidate<T> other{__shfl_xor_sync(kFullMask, c.dist2, o), __shfl_xor_sync(kFullMask, c.index, o)};
    if (better(other, c)) c = other;
  }
  return c;
}

struct PrimShape {
  index_t per_block;    // points per block (the last block may hold fewer)
  index_t coord_stride; // shared row stride of the coordinates; 0 when they stay in global memory
};

inline __device__ unsigned cluster_rank() {
#ifdef OBCE_CLUSTERS
  return cooperative_groups::this_cluster().block_rank();
#else
  return 0;
#endif
}
inline __device__ void cluster_sync() {
#ifdef OBCE_CLUSTERS
  cooperative_groups::this_cluster().sync();
#else
  __syncthreads();
#endif
}
template <class P> __device__ P *cluster_peer(P *p, unsigned rank) {
#ifdef OBCE_CLUSTERS
  return cooperative_groups::this_cluster().map_shared_rank(p, rank);
#else
  (void)rank; // one block: every rank is this block
  return p;
#endif
}

template <class T>
__global__ void prim_kernel(CloudView<T> v, PrimShape shape, unsigned cluster, T *out, bool all_edges,
                            unsigned long long *first_bad) {
  OBCE_DYNAMIC_SHARED(shared_raw);
  __shared__ Candidate<T> candidates[2];
  __shared__ Candidate<T> warp_candidates[32];
  __shared__ int block_bad;

  const unsigned rank = cluster_rank();
  const index_t c = blockIdx.x / cluster;
  const index_t n = v.n_points, dim = v.dim;
  const index_t lo = min(n, rank * shape.per_block), count = min(n, lo + shape.per_block) - lo;
  const bool shared_coords = shape.coord_stride > 0;
  T *dist = reinterpret_cast<T *>(shared_raw);
  T *p = dist + shape.per_block;
  T *coords = p + dim; // coords[k * coord_stride + j] for local point j
  const T *cloud = v.cloud(c);
  auto coord = [&](index_t j, index_t k) {
    return shared_coords ? coords[k * shape.coord_stride + j]
                         : cloud[(lo + j) * v.point_stride + k * v.dim_stride];
  };

  bool ok = true;
  for (index_t j = threadIdx.x; j < count; j += blockDim.x) {
    for (index_t k = 0; k < dim; ++k) {
      const T x = cloud[(lo + j) * v.point_stride + k * v.dim_stride];
      ok &= finite(x);
      if (shared_coords) coords[k * shape.coord_stride + j] = x;
    }
    dist[j] = (lo + j == 0) ? T(-1) : infinity<T>(); // point 0 is the root; -1 marks the tree
  }
  for (index_t k = threadIdx.x; k < dim; k += blockDim.x) p[k] = cloud[k * v.dim_stride];
  const int bad = __syncthreads_or(!ok);
  if (threadIdx.x == 0) block_bad = bad;
  cluster_sync();
  int any_bad = 0;
  for (unsigned r = 0; r < cluster; ++r) any_bad |= *cluster_peer(&block_bad, r);
  if (any_bad) {
    if (rank == 0 && threadIdx.x == 0) {
      report_bad(first_bad, c);
      const index_t n_out = all_edges ? n - 1 : 1;
      for (index_t e = 0; e < n_out; ++e) out[c * n_out + e] = std::numeric_limits<T>::quiet_NaN();
    }
    cluster_sync(); // peers may still be reading block_bad
    return;
  }

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_warps = blockDim.x / 32;
  const Candidate<T> none{infinity<T>(), std::numeric_limits<index_t>::max()};
  T longest = 0;
  for (index_t step = 0; step + 1 < n; ++step) {
    Candidate<T> best = none;
    for (index_t j = threadIdx.x; j < count; j += blockDim.x) {
      T d = dist[j];
      if (d < 0) continue;
      T acc0 = 0, acc1 = 0; // two chains hide the FMA latency
      index_t k = 0;
      for (; k + 1 < dim; k += 2) {
        const T d0 = coord(j, k) - p[k], d1 = coord(j, k + 1) - p[k + 1];
        acc0 = fma(d0, d0, acc0);
        acc1 = fma(d1, d1, acc1);
      }
      if (k < dim) {
        const T d0 = coord(j, k) - p[k];
        acc0 = fma(d0, d0, acc0);
      }
      d = min(d, acc0 + acc1);
      dist[j] = d;
      const Candidate<T> mine{d, lo + j};
      if (better(mine, best)) best = mine;
    }
    best = warp_best(best);
    if (lane == 0) warp_candidates[warp] = best;
    __syncthreads();
    if (warp == 0) {
      best = warp_best(lane < n_warps ? warp_candidates[lane] : none);
      if (lane == 0) candidates[step & 1] = best;
    }
    cluster_sync();
    // Every warp reads all blocks' candidates, one per lane (a single remote round trip), so all
    // threads agree on the winner without a broadcast.
    const Candidate<T> winner =
        warp_best(lane < int(cluster) ? cluster_peer(candidates, unsigned(lane))[step & 1] : none);
    const index_t w = winner.index;
    const unsigned owner = unsigned(w / shape.per_block);
    if (rank == 0 && threadIdx.x == 0) {
      if (all_edges) out[c * (n - 1) + step] = sqrt(winner.dist2);
      longest = max(longest, winner.dist2);
    }
    if (owner == rank && threadIdx.x == 0) dist[w - lo] = T(-1);
    for (index_t k = threadIdx.x; k < dim; k += blockDim.x)
      p[k] = shared_coords
                 ? cluster_peer(coords, owner)[k * shape.coord_stride + (w - owner * shape.per_block)]
                 : cloud[w * v.point_stride + k * v.dim_stride];
    __syncthreads();
  }
  if (!all_edges && rank == 0 && threadIdx.x == 0) out[c] = sqrt(longest);
  cluster_sync(); // peers may still be reading this block's coordinates and candidates
}

// ---- d-dimensional clouds, matrix path: all squared distances first, then Prim on the matrix ---
//
// In prim_kernel every step recomputes a row of distances from coordinates in shared memory: n·d
// loads per step on the critical path, and the shared-memory pipe bounds the whole run. Here the
// n²·d work runs first as one fully parallel tiled kernel (a matrix product with differences), and
// each Prim step reads one row of the matrix: one block per cloud, one barrier per step, no cluster.
// It needs n² values of scratch per cloud, so it is taken while that fits a budget.

constexpr int kPairTile = 64;              // points per side of a distance tile
constexpr int kPairDims = 16;              // coordinates per shared-memory chunk
constexpr int kPairStride = kPairTile + 4; // rows stay 16-byte aligned for vector loads
constexpr size_t kMatrixBudget = size_t(4) << 30;
constexpr int kRowLoads = 4; // row values a thread of prim_matrix_kernel loads before it uses the first

// prim_matrix_kernel's block size: kRowLoads points a thread (one batch of row loads a step), not
// one, since a step is issue-bound by the warps' reductions (H200, ncu: 1024 threads for 1500
// points, ~430 instructions a warp a step), and smaller blocks let two clouds share an SM.
inline int prim_matrix_threads(index_t n) {
  return int(std::clamp<index_t>((n + kRowLoads * 32 - 1) / (kRowLoads * 32) * 32, 64, 1024));
}

// matrices[c][i][j] = |x_i - x_j|^2 of cloud c, by 64 x 64 tiles (a 4 x 4 block per thread). Only
// tiles on or above the diagonal are computed; each also writes its mirror image (the same values:
// (x_i - x_j)^2 = (x_j - x_i)^2, summed in the same order), staged through shared memory so that
// both writes are coalesced. The diagonal is 0 unless point i has an infinite or NaN coordinate;
// then it is NaN.
template <class T> __global__ void __launch_bounds__(256) pairwise_kernel(CloudView<T> v, T *matrices) {
  if (blockIdx.y > blockIdx.x) return; // below the diagonal: the mirror of a computed tile
  __shared__ __align__(16) T a[kPairDims][kPairStride], b[kPairDims][kPairStride];
  __shared__ T mirror[kPairTile / 2][kPairTile + 1];
  const index_t n = v.n_points, c = blockIdx.z;
  const index_t i0 = index_t(blockIdx.y) * kPairTile, j0 = index_t(blockIdx.x) * kPairTile;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const T *cloud = v.cloud(c);
  T acc[4][4] = {};
  for (index_t k0 = 0; k0 < v.dim; k0 += kPairDims) {
    // Consecutive threads read consecutive coordinates of a point; padding is 0 on both sides (a
    // zero-filled copy reads nothing). Asynchronous copies, all in flight at once: the plain loop
    // compiled to two loads, then their stores, four times over (SASS).
    for (int t = threadIdx.x; t < kPairTile * kPairDims; t += blockDim.x) {
      const int p = t / kPairDims, k = t % kPairDims;
      const bool k_in = k0 + k < v.dim, a_in = k_in && i0 + p < n, b_in = k_in && j0 + p < n;
      const index_t offset = (k0 + k) * v.dim_stride;
      __pipeline_memcpy_async(&a[k][p], a_in ? &cloud[(i0 + p) * v.point_stride + offset] : cloud, sizeof(T),
                              a_in ? 0 : sizeof(T));
      __pipeline_memcpy_async(&b[k][p], b_in ? &cloud[(j0 + p) * v.point_stride + offset] : cloud, sizeof(T),
                              b_in ? 0 : sizeof(T));
    }
    __pipeline_commit();
    __pipeline_wait_prior(0);
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kPairDims; ++k) {
      T x[4], y[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        x[r] = a[k][ty * 4 + r];
        y[r] = b[k][tx * 4 + r];
      }
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int s = 0; s < 4; ++s) {
          const T d = x[r] - y[s];
          acc[r][s] = fma(d, d, acc[r][s]);
        }
    }
    __syncthreads();
  }
  T *m = matrices + c * n * n;
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const index_t i = i0 + ty * 4 + r;
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      const index_t j = j0 + tx * 4 + s;
      if (i < n && j < n) m[i * n + j] = acc[r][s];
    }
  }
  if (blockIdx.y == blockIdx.x) return;
  // The mirror image in two halves of 32 rows, within the 48 KB of static shared memory in double.
  for (int half = 0; half < 2; ++half) {
    __syncthreads(); // the previous half is stored
    if (tx / 8 == half)
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int s = 0; s < 4; ++s) mirror[(tx % 8) * 4 + s][ty * 4 + r] = acc[r][s];
    __syncthreads();
    for (int e = threadIdx.x; e < kPairTile / 2 * kPairTile; e += blockDim.x) {
      const int row = e / kPairTile, col = e % kPairTile;
      const index_t j = j0 + half * kPairTile / 2 + row, i = i0 + col;
      if (i < n && j < n) m[j * n + i] = mirror[row][col];
    }
  }
}

// The matrix path's warp reduction. Its distances are never NaN or negative (clouds with a NaN are
// rejected first, points in the tree skipped), so float distances order as their bits read as
// unsigned integers, and two warp-wide min instructions (sm_80 and later) find the least distance
// and, among the lanes holding it, the least index: the same winner as warp_best's five rounds of
// three shuffles and a two-key comparison. Indices fit 32 bits (n² values of scratch fit 4 GiB).
template <class T> __device__ Candidate<T> warp_least(Candidate<T> c) { return warp_best(c); }
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
template <> __device__ inline Candidate<float> warp_least(Candidate<float> c) {
  const unsigned key = __float_as_uint(c.dist2);
  const unsigned least = __reduce_min_sync(kFullMask, key);
  const unsigned index = __reduce_min_sync(kFullMask, key == least ? unsigned(c.index) : ~0u);
  return {__uint_as_float(least), index == ~0u ? std::numeric_limits<index_t>::max() : index_t(index)};
}
#endif

// Prim on cloud c0 + blockIdx.x's distance matrix, one block. Slot j of `dist` (squared distance to
// the tree, -1 once in it) is only ever touched by thread j % blockDim.x, so the one barrier per step
// is the one that gathers the warps' candidates (double-buffered by step parity).
template <class T>
__global__ void __launch_bounds__(1024) prim_matrix_kernel(const T *matrices, index_t n, index_t c0, T *out,
                                                           bool all_edges, unsigned long long *first_bad) {
  OBCE_DYNAMIC_SHARED(shared_raw);
  __shared__ Candidate<T> warp_candidates[2][32];
  T *dist = reinterpret_cast<T *>(shared_raw);
  const index_t c = c0 + blockIdx.x;
  const T *m = matrices + index_t(blockIdx.x) * n * n;
  bool ok = true;
  for (index_t j = threadIdx.x; j < n; j += blockDim.x) {
    ok &= !isnan(m[j * n + j]);
    dist[j] = j == 0 ? T(-1) : infinity<T>(); // point 0 is the root
  }
  if (__syncthreads_or(!ok)) {
    if (threadIdx.x == 0) {
      report_bad(first_bad, c);
      const index_t n_out = all_edges ? n - 1 : 1;
      for (index_t e = 0; e < n_out; ++e) out[c * n_out + e] = std::numeric_limits<T>::quiet_NaN();
    }
    return;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_warps = blockDim.x / 32;
  const Candidate<T> none{infinity<T>(), std::numeric_limits<index_t>::max()};
  index_t joined = 0; // the point that joined the tree last
  T longest = 0;
  for (index_t step = 0; step + 1 < n; ++step) {
    const T *row = m + joined * n;
    Candidate<T> best = none;
    for (index_t j0 = threadIdx.x; j0 < n; j0 += kRowLoads * blockDim.x) {
      T to_joined[kRowLoads];
#pragma unroll
      for (int u = 0; u < kRowLoads; ++u) {
        const index_t j = j0 + u * blockDim.x;
        to_joined[u] = j < n ? row[j] : T(0);
      }
#pragma unroll
      for (int u = 0; u < kRowLoads; ++u) {
        const index_t j = j0 + u * blockDim.x;
        if (j >= n || dist[j] < 0) continue;
        const T d = min(dist[j], to_joined[u]);
        dist[j] = d;
        const Candidate<T> mine{d, j};
        if (better(mine, best)) best = mine;
      }
    }
    const index_t mine = best.index; // the winner is some thread's own best: that thread owns its slot
    best = warp_least(best);
    if (lane == 0) warp_candidates[step & 1][warp] = best;
    __syncthreads();
    best = warp_least(lane < n_warps ? warp_candidates[step & 1][lane] : none);
    joined = best.index;
    if (mine == joined) dist[joined] = T(-1);
    if (threadIdx.x == 0) {
      if (all_edges) out[c * (n - 1) + step] = sqrt(best.dist2);
      longest = max(longest, best.dist2);
    }
  }
  if (!all_edges && threadIdx.x == 0) out[c] = sqrt(longest);
}

// ---- h0_deaths helpers -------------------------------------------------------------------------

template <class T>
__global__ void gather_lines_kernel(CloudView<T> v, T *dst, unsigned long long *first_bad) {
  const index_t total = v.n_clouds * v.n_points;
  for (index_t t = blockIdx.x * index_t(blockDim.x) + threadIdx.x; t < total;
       t += index_t(gridDim.x) * blockDim.x) {
    const index_t c = t / v.n_points, i = t % v.n_points;
    const T x = v.cloud(c)[i * v.point_stride];
    if (!finite(x)) report_bad(first_bad, c);
    dst[t] = x;
  }
}

template <class T> __global__ void gaps_kernel(const T *sorted, index_t n_clouds, index_t n, T *gaps) {
  const index_t total = n_clouds * (n - 1);
  for (index_t t = blockIdx.x * index_t(blockDim.x) + threadIdx.x; t < total;
       t += index_t(gridDim.x) * blockDim.x) {
    const index_t c = t / (n - 1), i = t % (n - 1);
    const T *run = sorted + c * n;
    // A NaN sorts to an end of its run, as an infinity does: a run is finite when its ends are. A
    // non-finite cloud's deaths are NaN, as its λ is, also in a call that reports nothing.
    gaps[t] = finite(run[0]) && finite(run[n - 1])
                  ? run[i + 1] - run[i] + T(0) // -0 - +0 is -0: a zero death is +0
                  : std::numeric_limits<T>::quiet_NaN();
  }
}

// ---- the range check of checked calls ---------------------------------------------------------

// The least of `count` rows of `row_length` ascending deaths that is out_of_range (`least`: the
// clouds' least_precise_death), into *first_out_of_range.
template <class T>
__global__ void out_of_range_kernel(const T *rows, index_t count, index_t row_length, T least,
                                    unsigned long long *first_out_of_range) {
  for (index_t c = blockIdx.x * index_t(blockDim.x) + threadIdx.x; c < count;
       c += index_t(gridDim.x) * blockDim.x) {
    const T *row = rows + c * row_length;
    if (out_of_range(row[0], row[row_length - 1], least)) report_bad(first_out_of_range, c);
  }
}

} // namespace obce::cuda
