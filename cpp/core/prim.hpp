// Prim's algorithm on the implicit complete graph of a point cloud: O(n) memory, O(n^2 d) time.
// Distances are direct coordinate differences, never |x|^2 + |y|^2 - 2 x.y, so clouds that share a
// large offset lose no precision to cancellation.
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "cloud_view.hpp"

namespace obce {

template <class T> struct Nearest {
  T dist2;       // squared distance to the tree
  index_t index; // the point outside the tree, -1 when none
};

// Points are stored in tiles of `tile_points` (structure of arrays within a tile): coordinate k of
// point j is W[tiled(j, k, dim)]. The distance loop runs over contiguous points, so it vectorizes
// for any dimension, and a tile's rows are adjacent, so it streams through memory in one sequence
// instead of `dim` sequences far apart (which hardware prefetchers cannot follow for large dim).
constexpr index_t tile_points = 64;

inline index_t tiled(index_t j, index_t k, index_t dim) {
  return (j / tile_points) * dim * tile_points + k * tile_points + j % tile_points;
}

// n rounded up to whole tiles.
inline index_t tiled_points(index_t n) { return (n + tile_points - 1) / tile_points * tile_points; }

// Lowers dist[j] to the squared distance between point j and p for j in [lo, hi), and returns the
// point nearest the tree (ties keep the lowest index; lo when every distance overflowed to inf).
// VectorBytes is the register width to compile for (GCC/Clang vector extensions): blocks of four
// registers of points keep their partial sums in registers across the whole coordinate loop. The
// nearest point is tracked per lane (value and index) and reduced across lanes once, at the end, so
// a step pays one horizontal reduction, not one per block. lo must start a tile, and the last block is
// computed whole, so W must hold finite values up to the end of hi's tile and dist must span that
// tile too: its slots past hi are rewritten with their own values.
template <class T, int VectorBytes>
OBCE_ALWAYS_INLINE Nearest<T> relax(const T *W, index_t dim, const T *p, T *dist, index_t lo, index_t hi) {
  typedef T vec __attribute__((vector_size(VectorBytes)));
  // Indices relative to lo, in integers as wide as T so that a comparison of T selects among them.
  using Index = std::conditional_t<sizeof(T) == 4, std::int32_t, std::int64_t>;
  typedef Index ivec __attribute__((vector_size(VectorBytes)));
  constexpr index_t lanes = VectorBytes / sizeof(T), unroll = 4, block = unroll * lanes;
  static_assert(tile_points % block == 0, "a block must not straddle two tiles");
  constexpr T inf = std::numeric_limits<T>::infinity();
  ivec lane{};
  for (index_t l = 0; l < lanes; ++l) lane[l] = Index(l);
  vec best = vec{} + inf;
  ivec best_index = ivec{};
  for (index_t j0 = lo; j0 < hi; j0 += block) {
    vec acc[unroll] = {};
    const T *rows = W + tiled(j0, 0, dim);
    for (index_t k = 0; k < dim; ++k) {
      const T *row = rows + k * tile_points;
      for (index_t u = 0; u < unroll; ++u) {
        vec x;
        __builtin_memcpy(&x, row + u * lanes, sizeof x);
        x -= p[k];
        acc[u] += x * x;
      }
    }
    T *d = dist + j0;
    const bool whole = j0 + block <= hi;
    for (index_t u = 0; u < unroll; ++u) {
      vec du;
      __builtin_memcpy(&du, d + u * lanes, sizeof du);
      const ivec index = lane + Index(j0 - lo + u * lanes);
      vec lowered = du < acc[u] ? du : acc[u];
      vec candidate = lowered;
      if (!whole) { // points past hi keep their distance and cannot be the nearest
        const auto live = index < Index(hi - lo);
        lowered = live ? lowered : du;
        candidate = live ? lowered : vec{} + inf;
      }
      __builtin_memcpy(d + u * lanes, &lowered, sizeof lowered);
      const auto closer = candidate < best;
      best = closer ? candidate : best;
      best_index = closer ? index : best_index;
    }
  }
  T nearest = inf;
  for (index_t l = 0; l < lanes; ++l) nearest = std::min(nearest, T(best[l]));
  Index first = std::numeric_limits<Index>::max();
  for (index_t l = 0; l < lanes; ++l)
    if (best[l] == nearest) first = std::min(first, Index(best_index[l]));
  if (hi <= lo) return {inf, index_t(-1)};
  return {nearest, lo + (nearest < inf ? index_t(first) : 0)};
}

// The pair-matrix path, for clouds small enough that all their squared distances fit in cache.
// Prim's steps above stream every active point's coordinates once per step, one FMA per value
// loaded, so they run at the cache's load rate. Computing all pairs first, in register blocks where
// each loaded coordinate serves `pair_rows` points, runs the same subtracts and FMAs at the FMA
// units' rate, and Prim then reads one number per point per step. The arithmetic is relax's, in
// the same order, so every squared distance is bitwise the one relax computes.

// Points of a block: one register of points j, paired with pair_rows points i (8: with the
// register of j and a broadcast, the 8 accumulators fit in 16 registers; measured faster on AVX2
// than 2, 4 or 16 rows, or 2 and 4 registers of j).
constexpr index_t pair_rows = 8;

// Row length (and row count) of the pair matrix: n rounded up to whole blocks in both directions.
template <class T, int VectorBytes> index_t pair_stride(index_t n) {
  constexpr index_t lanes = VectorBytes / sizeof(T), block = lanes > pair_rows ? lanes : pair_rows;
  return (n + block - 1) / block * block;
}

// D[i * stride + j] = squared distance between points i and j of W (tiled as above; points past n
// are W's finite padding), for every i below n and every j below stride (the rest of the padding
// may stay unwritten). Each block of pair_rows points i is paired with the points j from its own
// block on; the other triangle is filled by symmetry.
template <class T, int VectorBytes>
OBCE_ALWAYS_INLINE void pair_distances(const T *W, index_t n, index_t dim, T *D, index_t stride) {
  typedef T vec __attribute__((vector_size(VectorBytes)));
  constexpr index_t lanes = VectorBytes / sizeof(T), rows = pair_rows;
  static_assert(tile_points % lanes == 0 && tile_points % rows == 0, "blocks must not straddle two tiles");
  for (index_t i0 = 0; i0 < n; i0 += rows) {
    const T *own = W + tiled(i0, 0, dim);
    for (index_t j0 = i0 / lanes * lanes; j0 < stride; j0 += lanes) {
      vec acc[rows] = {};
      const T *cols = W + tiled(j0, 0, dim);
      for (index_t k = 0; k < dim; ++k) {
        vec x;
        __builtin_memcpy(&x, cols + k * tile_points, sizeof x);
        for (index_t r = 0; r < rows; ++r) {
          const vec diff = x - own[k * tile_points + r];
          acc[r] += diff * diff;
        }
      }
      T square[rows][lanes];
      __builtin_memcpy(square, acc, sizeof square);
      for (index_t r = 0; r < rows; ++r) {
        __builtin_memcpy(D + (i0 + r) * stride + j0, square[r], sizeof square[r]);
        for (index_t l = 0; l < lanes; ++l) D[(j0 + l) * stride + i0 + r] = square[r][l];
      }
    }
  }
}

// Prim's algorithm on the pair matrix, from point n - 1: writes the squared lengths of the n - 1
// tree edges to `edges`. D is pair_stride(n)² and dist and closed hold pair_stride(n) elements of
// scratch: closed[j] is +inf once j is in the tree (or j >= n) and 0 before, so max(dist, closed) is
// the distance of a point that may join.
template <class T, int VectorBytes>
OBCE_ALWAYS_INLINE void pair_prim(const T *W, index_t n, index_t dim, T *D, T *dist, T *closed, T *edges) {
  typedef T vec __attribute__((vector_size(VectorBytes)));
  using Index = std::conditional_t<sizeof(T) == 4, std::int32_t, std::int64_t>;
  typedef Index ivec __attribute__((vector_size(VectorBytes)));
  constexpr index_t lanes = VectorBytes / sizeof(T);
  constexpr T inf = std::numeric_limits<T>::infinity();
  const index_t stride = pair_stride<T, VectorBytes>(n);
  pair_distances<T, VectorBytes>(W, n, dim, D, stride);
  std::fill(dist, dist + stride, inf);
  std::fill(closed, closed + n, T(0));
  std::fill(closed + n, closed + stride, inf);
  ivec lane{};
  for (index_t l = 0; l < lanes; ++l) lane[l] = Index(l);
  index_t p = n - 1;
  for (index_t step = 0; step + 1 < n; ++step) {
    closed[p] = inf;
    const T *row = D + p * stride;
    vec best = vec{} + inf;
    ivec best_index = ivec{};
    for (index_t j0 = 0; j0 < stride; j0 += lanes) {
      vec d, r, c;
      __builtin_memcpy(&d, dist + j0, sizeof d);
      __builtin_memcpy(&r, row + j0, sizeof r);
      __builtin_memcpy(&c, closed + j0, sizeof c);
      d = r < d ? r : d;
      __builtin_memcpy(dist + j0, &d, sizeof d);
      const vec candidate = d < c ? c : d;
      const auto closer = candidate < best;
      best = closer ? candidate : best;
      best_index = closer ? lane + Index(j0) : best_index;
    }
    T nearest = inf;
    for (index_t l = 0; l < lanes; ++l) nearest = std::min(nearest, T(best[l]));
    index_t next = -1;
    for (index_t l = 0; l < lanes; ++l)
      if (best[l] == nearest && nearest < inf && (next < 0 || best_index[l] < next)) next = best_index[l];
    if (next < 0) // every distance overflowed: any point outside the tree joins at inf
      next = std::find(closed, closed + n, T(0)) - closed;
    edges[step] = nearest;
    p = next;
  }
}

template <class T> inline void copy_point(const T *W, index_t dim, index_t j, T *p) {
  for (index_t k = 0; k < dim; ++k) p[k] = W[tiled(j, k, dim)];
}

// Removes point j from the active points [lo, end) by moving point end - 1 into its place.
template <class T> inline void swap_remove(T *W, index_t dim, T *dist, index_t j, index_t end) {
  for (index_t k = 0; k < dim; ++k) W[tiled(j, k, dim)] = W[tiled(end - 1, k, dim)];
  dist[j] = dist[end - 1];
}

// Prim's algorithm over the n points of W (tiled as above, padded to whole tiles), starting from
// point n - 1. Calls on_edge with the squared length of each of the n - 1 tree edges. Permutes W's
// points; dist and p are scratch of n and dim elements. relax is the distance update above (passed
// in so that callers can pick a build of it for the running CPU).
template <class T, class Relax, class OnEdge>
void prim(T *W, index_t n, index_t dim, T *dist, T *p, Relax relax_fn, OnEdge on_edge) {
  index_t active = n - 1;
  copy_point(W, dim, active, p);
  std::fill(dist, dist + active, std::numeric_limits<T>::infinity());
  while (active > 0) {
    const Nearest<T> nearest = relax_fn(W, dim, p, dist, index_t(0), active);
    on_edge(nearest.dist2);
    copy_point(W, dim, nearest.index, p);
    swap_remove(W, dim, dist, nearest.index, active);
    --active;
  }
}

} // namespace obce
