// CPU backend: batches of clouds spread over OpenMP threads.
#pragma once
#include <exception>

#include "../core/cloud_view.hpp"

namespace obce::cpu {

// Asked on the calling thread about every 50 ms of a call: true stops the call, which then throws
// Interrupted (e.g. the caller saw Ctrl-C). Null: never asked.
using Interrupt = bool (*)();
struct Interrupted : std::exception {
  const char *what() const noexcept override { return "interrupted"; }
};

// λ of every cloud (the longest minimum-spanning-tree edge) into out[n_clouds].
// Reports the first cloud holding a NaN or an infinity (its λ is NaN) and the first whose λ is
// out_of_range. Throws std::invalid_argument when OBCE_SIMD holds an unknown value.
template <class T>
Findings death_radii(const CloudView<T> &clouds, T *out, int n_threads, Interrupt interrupt = nullptr);

// Every finite H0 death of every cloud, ascending, into out[n_clouds][n_points - 1].
// Reports like death_radii.
template <class T>
Findings h0_deaths(const CloudView<T> &clouds, T *out, int n_threads, Interrupt interrupt = nullptr);

// Threads used for n_threads <= 0 (all cores), and whether OpenMP was compiled in.
int default_threads();
bool has_openmp();
const char *simd_level(); // the distance loop's build chosen for this CPU, or what is wrong with OBCE_SIMD

} // namespace obce::cpu
