// H0 persistence of a 1-D cloud: its minimum spanning tree joins sorted neighbours, so the finite
// deaths are the gaps between consecutive sorted values.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

#include "cloud_view.hpp"

namespace obce {

// Largest gap between consecutive sorted values of x[0..n), in O(n) without sorting.
// n buckets of width (hi - lo) / n cover [lo, hi]; the largest gap is at least (hi - lo) / (n - 1),
// wider than a bucket, so it always spans two non-empty buckets: it is the largest difference
// between a bucket's minimum and the maximum of the non-empty bucket before it.
// Bucket indices are computed in double: the margin between a gap and a bucket width is a factor
// n / (n - 1), and the index arithmetic must stay well inside it. Indices are monotone in x, so
// every difference taken is one between sorted neighbours, computed exactly as in the input type.
// bucket_min and bucket_max hold n elements each.
template <class T>
T max_gap(const T *x, index_t n, T lo, T hi, T *bucket_min, T *bucket_max) {
  if (!(hi > lo)) return T(0);
  const double scale = double(n) / (double(hi) - double(lo));
  const T inf = std::numeric_limits<T>::infinity();
  std::fill(bucket_min, bucket_min + n, inf);
  std::fill(bucket_max, bucket_max + n, -inf);
  for (index_t i = 0; i < n; ++i) {
    index_t b = index_t((double(x[i]) - double(lo)) * scale);
    b = b < n ? b : n - 1;
    bucket_min[b] = std::min(bucket_min[b], x[i]);
    bucket_max[b] = std::max(bucket_max[b], x[i]);
  }
  T gap = 0, prev = bucket_max[0]; // bucket 0 holds lo
  for (index_t b = 1; b < n; ++b) {
    if (bucket_min[b] <= bucket_max[b]) {
      gap = std::max(gap, bucket_min[b] - prev);
      prev = bucket_max[b];
    }
  }
  return gap;
}

// All n - 1 gaps of x, ascending (the whole finite H0 diagram). Sorts x in place.
template <class T> void sorted_gaps(T *x, index_t n, T *gaps) {
  std::sort(x, x + n);
  for (index_t i = 0; i + 1 < n; ++i) gaps[i] = x[i + 1] - x[i];
  std::sort(gaps, gaps + (n - 1));
}

} // namespace obce
