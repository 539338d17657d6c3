// The CUDA kernels: device code only, no runtime calls, so that the tests can also run it on the CPU
// through a small SIMT emulator (tests/simt). The launches are in death_radii.cu.
#pragma once
#include <limits>

#include "../core/cloud_view.hpp"

// Thread-block clusters (Hopper and later; the emulator supplies its own).
#if !defined(OBCE_CLUSTERS) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#include <cooperative_groups.h>
#define OBCE_CLUSTERS 1
#endif

// The launch's dynamic shared memory (the emulator supplies its own).
#ifndef OBCE_DYNAMIC_SHARED
#define OBCE_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace obce::cuda {

constexpr unsigned kFullMask = 0xffffffffu;

template <class T> __device__ T infinity() { return std::numeric_limits<T>::infinity(); }
template <class T> __device__ bool finite(T x) { return x - x == T(0); }

// Float min/max through integer atomics: non-negative floats order like their bits as signed
// integers, negative ones in reverse as unsigned integers. -0.0 would take the signed branch with
// the bits of INT_MIN and lose every comparison, so it is first made +0.0 (v + 0 does that).
inline __device__ void atomic_min(float *a, float v) {
  v += 0.0f;
  if (v >= 0)
    atomicMin(reinterpret_cast<int *>(a), __float_as_int(v));
  else
    atomicMax(reinterpret_cast<unsigned *>(a), __float_as_uint(v));
}
inline __device__ void atomic_max(float *a, float v) {
  v += 0.0f;
  if (v >= 0)
    atomicMax(reinterpret_cast<int *>(a), __float_as_int(v));
  else
    atomicMin(reinterpret_cast<unsigned *>(a), __float_as_uint(v));
}
inline __device__ void atomic_min(double *a, double v) {
  v += 0.0;
  if (v >= 0)
    atomicMin(reinterpret_cast<long long *>(a), __double_as_longlong(v));
  else
    atomicMax(reinterpret_cast<unsigned long long *>(a), (unsigned long long)__double_as_longlong(v));
}
inline __device__ void atomic_max(double *a, double v) {
  v += 0.0;
  if (v >= 0)
    atomicMax(reinterpret_cast<long long *>(a), __double_as_longlong(v));
  else
    atomicMin(reinterpret_cast<unsigned long long *>(a), (unsigned long long)__double_as_longlong(v));
}

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

// λ of the n values x[i * stride] by one warp, with 2n elements of bucket scratch. Returns false
// (writing nothing) when a value is not finite.
template <class T>
__device__ bool warp_max_gap(const T *x, index_t stride, index_t n, T *bucket_min, T *out) {
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
  T *bucket_max = bucket_min + n;
  for (index_t b = lane; b < n; b += 32) {
    bucket_min[b] = infinity<T>();
    bucket_max[b] = -infinity<T>();
  }
  __syncwarp();
  const double scale = double(n) / (double(hi) - double(lo));
  for (index_t i = lane; i < n; i += 32) {
    const T xi = x[i * stride];
    const index_t b = min(n - 1, index_t((double(xi) - double(lo)) * scale));
    atomic_min(bucket_min + b, xi);
    atomic_max(bucket_max + b, xi);
  }
  __syncwarp();

  // Each lane scans a contiguous run of buckets; the maximum of all buckets before its run (an
  // exclusive max-scan over lanes) is the top of the previous non-empty bucket.
  const index_t run = (n + 31) / 32, b0 = min(n, lane * run), b1 = min(n, b0 + run);
  T run_max = -infinity<T>();
  for (index_t b = b0; b < b1; ++b) run_max = max(run_max, bucket_max[b]);
  for (int o = 1; o < 32; o <<= 1) {
    const T y = __shfl_up_sync(kFullMask, run_max, o);
    if (lane >= o) run_max = max(run_max, y);
  }
  T prev = __shfl_up_sync(kFullMask, run_max, 1);
  if (lane == 0) prev = -infinity<T>();
  T gap = 0;
  for (index_t b = b0; b < b1; ++b) {
    if (bucket_min[b] <= bucket_max[b]) {
      if (prev > -infinity<T>()) gap = max(gap, bucket_min[b] - prev);
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
template <class T> __global__ void line_tile_kernel(CloudView<T> v, T *out, unsigned long long *first_bad) {
  OBCE_DYNAMIC_SHARED(shared_raw);
  const index_t n = v.n_points, c0 = index_t(blockIdx.x) * kTileClouds;
  const int clouds_here = int(min(index_t(kTileClouds), v.n_clouds - c0));
  T *tile = reinterpret_cast<T *>(shared_raw); // tile[i * kTileStride + cloud]
  T *buckets = tile + n * kTileStride + (threadIdx.x / 32) * 2 * n;
  const bool points_contiguous = v.point_stride == 1 && v.cloud_stride != 1;
  for (index_t t = threadIdx.x; t < n * kTileClouds; t += blockDim.x) {
    const index_t cloud = points_contiguous ? t / n : t % kTileClouds;
    const index_t i = points_contiguous ? t % n : t / kTileClouds;
    if (cloud < clouds_here) tile[i * kTileStride + cloud] = v.cloud(c0 + cloud)[i * v.point_stride];
  }
  __syncthreads();
  for (int cloud = threadIdx.x / 32; cloud < clouds_here; cloud += blockDim.x / 32) {
    if (!warp_max_gap(tile + cloud, index_t(kTileStride), n, buckets, out + c0 + cloud) &&
        threadIdx.x % 32 == 0) {
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
                                        T *global_buckets) {
  OBCE_DYNAMIC_SHARED(shared_raw);
  const int warp = threadIdx.x / 32;
  const index_t c = index_t(blockIdx.x) * (blockDim.x / 32) + warp;
  if (c >= v.n_clouds) return;
  const index_t n = v.n_points;
  T *buckets = global_buckets ? global_buckets + c * 2 * n : reinterpret_cast<T *>(shared_raw) + warp * 2 * n;
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
    gaps[t] = sorted[c * n + i + 1] - sorted[c * n + i];
  }
}

} // namespace obce::cuda
