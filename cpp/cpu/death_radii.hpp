// CPU backend: batches of clouds spread over OpenMP threads.
#pragma once
#include "../core/cloud_view.hpp"

namespace obce::cpu {

// λ of every cloud (the longest minimum-spanning-tree edge) into out[n_clouds].
// Returns the index of the first cloud holding a NaN or an infinity, or -1; such a cloud's λ is NaN.
// Throws std::invalid_argument when OBCE_SIMD holds an unknown value.
template <class T> index_t death_radii(const CloudView<T> &clouds, T *out, int n_threads);

// Every finite H0 death of every cloud, ascending, into out[n_clouds][n_points - 1].
// Returns the first non-finite cloud like death_radii.
template <class T> index_t h0_deaths(const CloudView<T> &clouds, T *out, int n_threads);

// Threads used for n_threads <= 0 (all cores), and whether OpenMP was compiled in.
int default_threads();
bool has_openmp();
const char *simd_level(); // the distance loop's build chosen for this CPU, or what is wrong with OBCE_SIMD

} // namespace obce::cpu
