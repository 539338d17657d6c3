// A batch of point clouds seen through strides, so that any input layout is read in place.
#pragma once
#include <cstdint>

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

} // namespace obce
