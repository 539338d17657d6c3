// CUDA backend: one launch for a whole batch of clouds, on the caller's stream.
#pragma once
#include <cstdint>
#include <string>

#include "../core/cloud_view.hpp"

namespace obce::cuda {

// Same contracts as obce::cpu (first non-finite cloud or -1), for device memory on `device`.
// With check_finite false nothing is copied back to the host and the call does not wait for the
// stream; a non-finite cloud then reads NaN.
template <class T>
index_t death_radii(const CloudView<T> &clouds, T *out, int device, std::uintptr_t stream, bool check_finite);
template <class T>
index_t h0_deaths(const CloudView<T> &clouds, T *out, int device, std::uintptr_t stream, bool check_finite);

int device_count(); // 0 where there is no usable driver or GPU
std::string device_name(int device);

} // namespace obce::cuda
