// Prim's algorithm on the implicit complete graph of a point cloud: O(n) memory, O(n^2 d) time.
// Distances are direct coordinate differences, never |x|^2 + |y|^2 - 2 x.y, so clouds that share a
// large offset lose no precision to cancellation.
#pragma once
#include <algorithm>
#include <limits>

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
// registers of points keep their partial sums in registers across the whole coordinate loop.
// lo must start a tile, and the last block is computed whole, so W must hold finite values up to the
// end of hi's tile; only [lo, hi) of dist is touched.
template <class T, int VectorBytes>
OBCE_ALWAYS_INLINE Nearest<T> relax(const T *W, index_t dim, const T *p, T *dist, index_t lo, index_t hi) {
  typedef T vec __attribute__((vector_size(VectorBytes)));
  constexpr index_t lanes = VectorBytes / sizeof(T), unroll = 4, block = unroll * lanes;
  static_assert(tile_points % block == 0, "a block must not straddle two tiles");
  Nearest<T> best{std::numeric_limits<T>::infinity(), hi > lo ? lo : index_t(-1)};
  for (index_t j0 = lo; j0 < hi; j0 += block) {
    vec acc[unroll] = {};
    const T *rows = W + tiled(j0, 0, dim);
    for (index_t k = 0; k < dim; ++k) {
      const T *row = rows + k * tile_points;
      const vec pk = vec{} + p[k];
      for (index_t u = 0; u < unroll; ++u) {
        vec x;
        __builtin_memcpy(&x, row + u * lanes, sizeof x);
        x -= pk;
        acc[u] += x * x;
      }
    }
    T *d = dist + j0;
    const index_t len = std::min(block, hi - j0);
    T block_min = std::numeric_limits<T>::infinity();
    if (len == block) {
      vec low = acc[0] + std::numeric_limits<T>::infinity();
      for (index_t u = 0; u < unroll; ++u) {
        vec du;
        __builtin_memcpy(&du, d + u * lanes, sizeof du);
        du = du < acc[u] ? du : acc[u];
        __builtin_memcpy(d + u * lanes, &du, sizeof du);
        low = low < du ? low : du;
      }
      for (index_t l = 0; l < lanes; ++l) block_min = std::min(block_min, T(low[l]));
    } else {
      T sums[block];
      __builtin_memcpy(sums, acc, sizeof sums);
      for (index_t j = 0; j < len; ++j) {
        d[j] = std::min(d[j], sums[j]);
        block_min = std::min(block_min, d[j]);
      }
    }
    if (block_min < best.dist2) best = {block_min, j0 + index_t(std::find(d, d + len, block_min) - d)};
  }
  return best;
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
