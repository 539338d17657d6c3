// H0 persistence of a 1-D cloud: its minimum spanning tree joins sorted neighbours, so the finite
// deaths are the gaps between consecutive sorted values.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

#include "cloud_view.hpp"

namespace obce {

// The bucket arithmetic of max_gap, shared with the CUDA kernel: calls fill(scale, factor), after
// which value x belongs in bucket index_t((C(x) * factor - C(lo) * factor) * scale), C being scale's
// type, the precision of the index arithmetic. The margin between the largest gap and a bucket
// width is a factor n / (n - 1), and the index arithmetic must stay well inside it: its relative
// error is about n ulps, so float suffices while n^2 is well below 2^23 (float in the CPU kernel for
// n up to 2048; the error stays below the margin up to about 2900), double beyond, and wherever
// float's scale n / (hi - lo) would overflow or vanish. Where double's would too (ranges beyond
// 1.8e308, or below n * 5.6e-309), the values are first scaled by a power of two, which keeps every
// step monotone.
template <class T, class Fill> OBCE_HOST_DEVICE void with_bucket_scale(T lo, T hi, index_t n, Fill fill) {
  if (sizeof(T) == sizeof(float) && n <= 2048) {
    const float scale = float(n) / (float(hi) - float(lo));
    if (scale > 0 && scale <= std::numeric_limits<float>::max()) return fill(scale, 1.0f);
  }
  const double range = double(hi) - double(lo), largest = std::numeric_limits<double>::max();
  // Halving brings a range below twice the largest double within reach; 2^512 lifts one below
  // n * 5.6e-309, whose values are below range * 2^53 (an ulp of each is at most the range).
  const double factor = range > largest ? 0.5 : double(n) / range > largest ? 0x1p512 : 1.0;
  fill(double(n) / (double(hi) * factor - double(lo) * factor), factor);
}

// Largest gap between consecutive sorted values of x[0..n), in O(n) without sorting.
// n buckets of width (hi - lo) / n cover [lo, hi]; the largest gap is at least (hi - lo) / (n - 1),
// wider than a bucket, so it always spans two non-empty buckets: it is the largest difference
// between a bucket's minimum and the maximum of the non-empty bucket before it. Indices are
// monotone in x, so every difference taken is one between sorted neighbours, computed exactly as in
// the input type (infinite where it overflows). bucket_min and bucket_max hold n elements each.
template <class T> T max_gap(const T *x, index_t n, T *bucket_min, T *bucket_max) {
  T lo = x[0], hi = x[0];
#pragma omp simd reduction(min : lo) reduction(max : hi)
  for (index_t i = 0; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  if (!(hi > lo)) return T(0);
  const T inf = std::numeric_limits<T>::infinity();
  std::fill(bucket_min, bucket_min + n, inf);
  std::fill(bucket_max, bucket_max + n, -inf);
  with_bucket_scale(lo, hi, n, [&](auto scale, decltype(scale) factor) {
    using C = decltype(scale);
    for (index_t i = 0; i < n; ++i) {
      index_t b = index_t((C(x[i]) * factor - C(lo) * factor) * scale);
      b = b < n ? b : n - 1;
      bucket_min[b] = std::min(bucket_min[b], x[i]);
      bucket_max[b] = std::max(bucket_max[b], x[i]);
    }
  });
  // About a third of the buckets are empty, at random, which a branch in the scan mispredicts (and
  // compilers branch on a select there): empty buckets get a bottom of -inf first, in a pass that
  // vectorizes, so the scan is branch-free max operations. Tops of non-empty buckets increase, so the
  // running maximum of the tops is the previous top.
#pragma omp simd
  for (index_t b = 0; b < n; ++b) bucket_min[b] = bucket_min[b] <= bucket_max[b] ? bucket_min[b] : -inf;
  T gap = 0, prev = bucket_max[0]; // bucket 0 holds lo
  for (index_t b = 1; b < n; ++b) {
    gap = std::max(gap, bucket_min[b] - prev);
    prev = std::max(prev, bucket_max[b]);
  }
  return gap;
}

// All n - 1 gaps of x, ascending (the whole finite H0 diagram). Sorts x in place.
template <class T> void sorted_gaps(T *x, index_t n, T *gaps) {
  std::sort(x, x + n);
  // + 0 makes the gap of -0 after +0 (equal to sort) a +0, as every other zero death.
  for (index_t i = 0; i + 1 < n; ++i) gaps[i] = x[i + 1] - x[i] + T(0);
  std::sort(gaps, gaps + (n - 1));
}

} // namespace obce
