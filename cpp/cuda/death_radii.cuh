// CUDA backend: one launch for a whole batch of clouds, on the caller's stream.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "../core/cloud_view.hpp"

namespace obce::cuda {

// A call's device scratch: `bytes` on the call's device, usable in its stream's order until the
// call returns (the bindings draw it from torch's caching allocator: reused across calls without a
// new mapping, and counted and freed by torch).
using Scratch = std::function<void *(std::size_t bytes)>;

// Same contracts as obce::cpu, for device memory on `device`. With check_finite false nothing is
// checked or copied back to the host (the Findings are empty) and the call does not wait for the
// stream; a non-finite cloud then reads NaN, an overflowed one infinity.
template <class T>
Findings death_radii(const CloudView<T> &clouds, T *out, int device, std::uintptr_t stream,
                     const Scratch &scratch, bool check_finite);
template <class T>
Findings h0_deaths(const CloudView<T> &clouds, T *out, int device, std::uintptr_t stream,
                   const Scratch &scratch, bool check_finite);

int device_count(); // 0 where there is no usable driver or GPU
std::string device_name(int device);

} // namespace obce::cuda
