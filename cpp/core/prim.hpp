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
