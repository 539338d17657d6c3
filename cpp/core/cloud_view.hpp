// A batch of point clouds seen through strides, so that any input layout is read in place, and
// what a call found in it.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>

#ifdef __CUDACC__
#define OBCE_HOST_DEVICE __host__ __device__
#else
#define OBCE_HOST_DEVICE
#endif

// The hot loops must be inlined into the per-instruction-set wrappers that call them, or they would
// be compiled for the baseline only.
#if defined(__GNUC__)
#define OBCE_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define OBCE_ALWAYS_INLINE inline
#endif

namespace obce {

using index_t = std::int64_t;

// Point `i` of cloud `c` has coordinate `k` at data[c * cloud_stride + i * point_stride + k * dim_stride].
// Strides are in elements. A (n_points, n_neurons) activation matrix is a view with dim == 1,
// cloud_stride = its column stride and point_stride = its row stride.
template <class T> struct CloudView {
  const T *data;
  index_t n_clouds, n_points, dim;
  index_t cloud_stride, point_stride, dim_stride;

  OBCE_HOST_DEVICE const T *cloud(index_t c) const { return data + c * cloud_stride; }
};

// The first cloud holding a NaN or an infinity, and the first whose deaths are out of the range
// their computation holds (out_of_range); -1 where there is none.
struct Findings {
  index_t first_bad = -1, first_out_of_range = -1;
};

// The least death of a cloud of `dim` dimensions that its squared distance holds to the type's
// precision: 0 for d = 1 (nothing is squared), else sqrt(d) times the square root of the least
// normal value (2^-63 in float, 2^-511 in double). Above it the d squared coordinate differences sum
// to at least d times the least normal value, so the subnormal rounding of each costs the sum at
// most half an ulp in all; below it precision is lost, or the square vanishes.
template <class T> T least_precise_death(index_t dim) {
  const double root_of_least_normal = sizeof(T) == sizeof(float) ? 0x1p-63 : 0x1p-511;
  return dim > 1 ? T(std::sqrt(double(dim)) * root_of_least_normal) : T(0);
}

// Whether a finite cloud's deaths are out of range: its λ infinite (its squared distances
// overflowed, for d > 1, or its distances, for d = 1) or its smallest death below `least`
// (least_precise_death). Given λ alone, smallest is λ. obce.kernel computes such clouds again, scaled.
template <class T> OBCE_HOST_DEVICE bool out_of_range(T smallest, T lambda, T least) {
  return smallest < least || lambda == std::numeric_limits<T>::infinity();
}

} // namespace obce
