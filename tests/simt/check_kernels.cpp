// Runs obce's CUDA kernels on the CPU through the SIMT emulator and checks them against plain
// references (a sort for 1-D clouds, Prim in double precision): random clouds with signed zeros,
// ties and duplicate points, partial tiles, both 1-D layouts, unchecked calls, NaN and infinite
// inputs, Prim in one block and in clusters of blocks.
// Prints one line per check; exits 1 if any failed. Built and run by tests/test_kernels_emulated.py.
#include <cfloat>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "simt.hpp"
// simt.hpp first: it defines what the kernels take from CUDA.
#include "../../cpp/cuda/kernels.cuh"

using namespace obce;
using namespace obce::cuda;

namespace {

int failures = 0;

// Scratch that converts to whatever element pointer a kernel takes.
struct Scratch {
  void *data;
  template <class U> operator U *() const { return static_cast<U *>(data); }
};

void expect(bool ok, const std::string &what) {
  if (!ok) {
    ++failures;
    std::printf("FAIL %s\n", what.c_str());
  }
}

// Largest gap between sorted neighbours, each difference taken in T as the kernels do.
template <class T> double reference_max_gap(std::vector<T> x) {
  std::sort(x.begin(), x.end());
  T gap = 0;
  for (size_t i = 1; i < x.size(); ++i) gap = std::max(gap, T(x[i] - x[i - 1]));
  return gap;
}

// Sorted MST edge lengths by Prim's algorithm in double precision.
template <class T> std::vector<double> reference_edges(const T *x, int n, int dim) {
  std::vector<double> dist(n, INFINITY), edges;
  std::vector<bool> in_tree(n, false);
  in_tree[0] = true;
  for (int step = 1, joined = 0; step < n; ++step) {
    int best = -1;
    for (int j = 0; j < n; ++j) {
      if (in_tree[j]) continue;
      double d = 0;
      for (int k = 0; k < dim; ++k) {
        const double diff = double(x[j * dim + k]) - double(x[joined * dim + k]);
        d += diff * diff;
      }
      dist[j] = std::min(dist[j], d);
      if (best < 0 || dist[j] < dist[best]) best = j;
    }
    edges.push_back(std::sqrt(dist[best]));
    in_tree[best] = true;
    joined = best;
  }
  std::sort(edges.begin(), edges.end());
  return edges;
}

// 1-D clouds with GELU-like values: many -0.0, small negatives, values on a grid (ties).
template <class T> std::vector<T> line_values(size_t count, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0, 4);
  std::vector<T> x(count);
  for (auto &v : x) {
    const double z = normal(rng);
    v = z < -2 ? T(-0.0) : z < 0 ? T(z * 1e-3) : T(std::round(z * 8) / 8);
  }
  return x;
}

// Values spread over [-0.9, 0.9] * spread: near T's largest value, hi - lo overflows (most gaps do
// not); among subnormals, n / (hi - lo) does.
std::string spread_name(double spread) {
  char name[32] = "";
  if (spread) std::snprintf(name, sizeof name, " spread %g", spread);
  return name;
}

template <class T> std::vector<T> spread_values(size_t count, unsigned seed, double spread) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> fraction(-0.9, 0.9);
  std::vector<T> x(count);
  for (auto &v : x) v = T(fraction(rng) * spread);
  return x;
}

template <class T>
void check_line(int n, int clouds, bool clouds_contiguous, unsigned seed, double spread = 0) {
  std::vector<T> data =
      spread ? spread_values<T>(size_t(n) * clouds, seed, spread) : line_values<T>(size_t(n) * clouds, seed);
  const int bad_cloud = clouds > 3 ? 3 : -1;
  if (bad_cloud >= 0) data[clouds_contiguous ? size_t(bad_cloud) * n + 1 : size_t(clouds) + bad_cloud] = NAN;
  CloudView<T> v{data.data(), clouds, n, 1, clouds_contiguous ? n : 1, clouds_contiguous ? 1 : clouds, 0};
  const std::string name = std::string(sizeof(T) == 4 ? "float" : "double") + " n=" + std::to_string(n) +
                           " clouds=" + std::to_string(clouds) +
                           (clouds_contiguous ? " contiguous" : " matrix") + spread_name(spread);
  // first_bad null: an unchecked call (no flag; the NaN result is all there is)
  auto verify = [&](const std::vector<T> &out, const unsigned long long *first_bad, const char *kernel) {
    for (int c = 0; c < clouds; ++c) {
      std::vector<T> x(n);
      for (int i = 0; i < n; ++i) x[i] = v.cloud(c)[i * v.point_stride];
      if (c == bad_cloud)
        expect(std::isnan(double(out[c])), std::string(kernel) + " " + name + ": NaN cloud not NaN");
      else
        expect(double(out[c]) == reference_max_gap(x), std::string(kernel) + " " + name + " cloud " +
                                                           std::to_string(c) + ": " + std::to_string(out[c]));
    }
    if (first_bad)
      expect(*first_bad == (bad_cloud >= 0 ? (unsigned long long)bad_cloud : ~0ull),
             std::string(kernel) + " flag");
  };

  std::vector<T> out(clouds, T(-1));
  unsigned long long first_bad = ~0ull;
  for (unsigned long long *flag : {&first_bad, static_cast<unsigned long long *>(nullptr)}) {
    std::fill(out.begin(), out.end(), T(-1));
    simt_launch(dim3((clouds + kTileClouds - 1) / kTileClouds), dim3(kLineWarps * 32),
                [&] { line_tile_kernel<T>(v, out.data(), flag); });
    verify(out, flag, flag ? "line_tile_kernel" : "line_tile_kernel (unchecked)");
  }

  for (bool global_buckets : {false, true}) {
    std::vector<unsigned char> buckets(global_buckets ? 2 * sizeof(T) * n * clouds : 0);
    std::fill(out.begin(), out.end(), T(-1));
    first_bad = ~0ull;
    simt_launch(dim3((clouds + kLineWarps - 1) / kLineWarps), dim3(kLineWarps * 32), [&] {
      line_death_radii_kernel<T>(v, out.data(), &first_bad,
                                 Scratch{global_buckets ? buckets.data() : nullptr});
    });
    verify(out, &first_bad,
           global_buckets ? "line_death_radii_kernel (global buckets)" : "line_death_radii_kernel");
  }
  std::printf("ok 1-D %s\n", name.c_str());
}

// d > 1: random clouds with a duplicate point (and optionally one non-finite coordinate in
// bad_cloud) through run(v, all_edges, out, first_bad), against reference_edges.
template <class T, class Run>
void check_mst(const std::string &kernel, int clouds, int n, int dim, unsigned seed, int bad_cloud, T bad,
               Run run) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal;
  std::vector<T> data(size_t(clouds) * n * dim);
  for (auto &x : data) x = T(normal(rng));
  if (n > 5)
    for (int k = 0; k < dim; ++k) data[3 * dim + k] = data[5 * dim + k];
  if (bad_cloud >= 0) data[(size_t(bad_cloud) * n + n / 2) * dim + dim - 1] = bad;
  const CloudView<T> v{data.data(), clouds, n, dim, index_t(n) * dim, dim, 1};
  const std::string name = kernel + (sizeof(T) == 4 ? " float" : " double") +
                           " clouds=" + std::to_string(clouds) + " n=" + std::to_string(n) +
                           " dim=" + std::to_string(dim);
  const double rtol = sizeof(T) == 4 ? 1e-5 : 1e-12;
  for (bool all_edges : {false, true}) {
    const int per_cloud = all_edges ? n - 1 : 1;
    std::vector<T> out(size_t(clouds) * per_cloud, T(-1));
    unsigned long long first_bad = ~0ull;
    run(v, all_edges, out.data(), &first_bad);
    for (int c = 0; c < clouds; ++c) {
      const std::string cloud = name + (all_edges ? " edges" : " lambda") + " cloud " + std::to_string(c);
      if (c == bad_cloud) {
        expect(std::isnan(double(out[size_t(c) * per_cloud])), cloud + ": non-finite cloud not NaN");
        continue;
      }
      const std::vector<double> ref = reference_edges(data.data() + size_t(c) * n * dim, n, dim);
      std::vector<double> got(out.begin() + size_t(c) * per_cloud, out.begin() + size_t(c + 1) * per_cloud);
      std::sort(got.begin(), got.end());
      const std::vector<double> want = all_edges ? ref : std::vector<double>{ref.back()};
      for (size_t e = 0; e < want.size(); ++e)
        expect(std::abs(got[e] - want[e]) <= rtol * ref.back(),
               cloud + ": " + std::to_string(got[e]) + " vs " + std::to_string(want[e]));
    }
    expect(first_bad == (bad_cloud >= 0 ? (unsigned long long)bad_cloud : ~0ull), name + ": flag");
  }
  std::printf("ok %s\n", name.c_str());
}

// The cluster kernel: `cluster` blocks per cloud (their points split as the launcher splits them),
// coordinates in shared or in global memory.
template <class T>
void check_prim(int clouds, int n, int dim, unsigned cluster, bool shared_coords, unsigned seed,
                int bad_cloud = -1, T bad = 0) {
  const index_t per_block = (n + cluster - 1) / cluster;
  const PrimShape shape{per_block, shared_coords ? (per_block | 1) : 0};
  const unsigned threads = std::clamp(int(per_block + 31) / 32 * 32, 64, 512);
  const std::string kernel = "prim_kernel (cluster of " + std::to_string(cluster) + ", " +
                             (shared_coords ? "shared" : "global") + " coordinates)";
  check_mst<T>(kernel, clouds, n, dim, seed, bad_cloud, bad,
               [&](const CloudView<T> &v, bool all_edges, T *out, unsigned long long *first_bad) {
                 simt_launch(
                     dim3(clouds * cluster), dim3(threads),
                     [&] { prim_kernel<T>(v, shape, cluster, out, all_edges, first_bad); }, cluster);
               });
}

// The matrix path, two clouds per chunk as the launcher would split them; `threads` 0 takes the
// launcher's block size.
template <class T>
void check_matrix(int clouds, int n, int dim, unsigned seed, int bad_cloud = -1, T bad = 0, int threads = 0) {
  check_mst<T>("matrix path", clouds, n, dim, seed, bad_cloud, bad,
               [&](const CloudView<T> &v, bool all_edges, T *out, unsigned long long *first_bad) {
                 constexpr index_t chunk = 2;
                 std::vector<T> matrices(size_t(chunk) * n * n, T(-1));
                 const unsigned tiles = (n + kPairTile - 1) / kPairTile;
                 const unsigned block = threads ? threads : prim_matrix_threads(n);
                 for (index_t c0 = 0; c0 < clouds; c0 += chunk) {
                   CloudView<T> part = v;
                   part.data = v.cloud(c0);
                   part.n_clouds = std::min(chunk, index_t(clouds) - c0);
                   simt_launch(dim3(tiles, tiles, part.n_clouds), dim3(256),
                               [&] { pairwise_kernel<T>(part, matrices.data()); });
                   simt_launch(dim3(part.n_clouds), dim3(block), [&] {
                     prim_matrix_kernel<T>(matrices.data(), n, c0, out, all_edges, first_bad);
                   });
                 }
               });
}

// The 1-D helpers of the full diagram (gather into runs, then neighbour gaps of the sorted runs).
template <class T> void check_h0_helpers(int n, int clouds, unsigned seed) {
  std::vector<T> data = line_values<T>(size_t(n) * clouds, seed);
  data[size_t(clouds) * 2 + 1] = INFINITY; // point 2 of cloud 1
  const CloudView<T> v{data.data(), clouds, n, 1, 1, clouds, 0};
  std::vector<T> runs(size_t(n) * clouds, T(-1)), gaps(size_t(n - 1) * clouds, T(-1));
  unsigned long long first_bad = ~0ull;
  simt_launch(dim3(3), dim3(64), [&] { gather_lines_kernel<T>(v, runs.data(), &first_bad); });
  bool gathered = first_bad == 1;
  for (int c = 0; c < clouds; ++c)
    for (int i = 0; i < n; ++i)
      gathered &= simt_bits<std::uint64_t>(double(runs[size_t(c) * n + i])) ==
                  simt_bits<std::uint64_t>(double(data[size_t(i) * clouds + c]));
  expect(gathered, "gather_lines_kernel");
  for (int c = 0; c < clouds; ++c) std::sort(runs.begin() + size_t(c) * n, runs.begin() + size_t(c + 1) * n);
  simt_launch(dim3(2), dim3(64), [&] { gaps_kernel<T>(runs.data(), clouds, n, gaps.data()); });
  bool gapped = true;
  for (int c = 0; c < clouds; ++c)
    for (int i = 0; i + 1 < n; ++i) {
      const T got = gaps[size_t(c) * (n - 1) + i];
      if (c == 1) { // the cloud with an infinite point: every death NaN, not the gaps next to infinity
        gapped &= std::isnan(double(got));
        continue;
      }
      gapped &= got == runs[size_t(c) * n + i + 1] - runs[size_t(c) * n + i];
    }
  expect(gapped, "gaps_kernel");
  std::printf("ok h0 helpers n=%d clouds=%d\n", n, clouds);
}

// The range check of checked calls: the least row of ascending deaths whose smallest or largest
// (λ) is out of range, for rows of three deaths and for λ alone, of clouds of 1, 2 and 4 dimensions.
template <class T> void check_out_of_range(unsigned seed) {
  const index_t count = 700;
  for (index_t row_length : {3, 1}) {
    std::vector<T> rows = line_values<T>(size_t(count * row_length), seed);
    for (auto &v : rows) v = std::abs(v) + T(1); // in range
    const auto at = [&](index_t row, index_t i) -> T & { return rows[size_t(row * row_length + i)]; };
    at(530, row_length - 1) = INFINITY;
    at(410, 0) = T(1e-30);                     // below 2^-63: out of range for float squares only
    at(370, 0) = T(0x1p-63) * T(1.5);          // below sqrt(4) * 2^-63: out of range for 4 float dimensions
    if (row_length > 2) at(300, 1) = INFINITY; // neither the smallest death nor λ
    at(200, row_length - 1) = NAN;             // a non-finite cloud's λ is that cloud's own report
    for (index_t dim : {1, 2, 4}) {
      unsigned long long first = ~0ull;
      simt_launch(dim3(2), dim3(64), [&] {
        out_of_range_kernel<T>(rows.data(), count, row_length, least_precise_death<T>(dim), &first);
      });
      const unsigned long long want = sizeof(T) == sizeof(double) || dim == 1 ? 530 : dim == 4 ? 370 : 410;
      expect(first == want, std::string("out_of_range_kernel ") + (sizeof(T) == 4 ? "float" : "double") +
                                " dim " + std::to_string(dim) + " rows of " + std::to_string(row_length) +
                                ": " + std::to_string(first));
    }
  }
  std::printf("ok out_of_range_kernel %s\n", sizeof(T) == 4 ? "float" : "double");
}

} // namespace

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0); // every finished check shows, even if a later one crashes
  check_h0_helpers<float>(150, 7, 5);       // grid-stride loops: more values than threads
  check_h0_helpers<double>(3, 2, 6);
  check_out_of_range<float>(30);
  check_out_of_range<double>(31);
  for (bool contiguous : {false, true}) {
    check_line<float>(150, 70, contiguous, 1); // three tiles, the last one partial
    check_line<double>(150, 40, contiguous, 2);
    check_line<float>(2, 33, contiguous, 3);
    check_line<float>(37, 3, contiguous, 4);
    for (double spread : {double(FLT_MAX), 1e-39}) {
      check_line<float>(150, 40, contiguous, 7, spread);
      check_line<float>(2, 33, contiguous, 9, spread); // near FLT_MAX the gaps overflow: infinite
    }
    for (double spread : {DBL_MAX, 1e-309}) check_line<double>(150, 40, contiguous, 8, spread);
  }
  for (bool shared_coords : {true, false}) {
    check_prim<float>(3, 150, 17, 1, shared_coords, 10);
    check_prim<double>(2, 90, 64, 1, shared_coords, 11);
    check_prim<float>(2, 2, 3, 1, shared_coords, 12);
    check_prim<float>(2, 300, 17, 3, shared_coords, 15); // points split over a cluster
  }
  check_prim<float>(3, 60, 5, 1, true, 13, 1, NAN);
  check_prim<double>(2, 60, 5, 1, true, 14, 0, INFINITY);
  check_prim<double>(2, 150, 5, 4, true, 16, 1, NAN); // the NaN in the cluster's second block
  check_prim<float>(2, 2, 3, 2, true, 17);            // one point per block
  check_matrix<float>(3, 150, 17, 20);
  check_matrix<double>(2, 90, 64, 21);
  check_matrix<float>(2, 2, 3, 22);
  check_matrix<float>(3, 70, 5, 23, 2, NAN);
  check_matrix<double>(2, 70, 5, 24, 0, -INFINITY);
  check_matrix<float>(1, 300, 3, 25, -1, 0.0f, 64); // five points a thread: two rounds of row loads
  check_matrix<float>(1, 700, 4, 26);               // the launcher's block: 192 threads, up to 4 points each
  std::printf("%d failures\n", failures);
  return failures ? 1 : 0;
}
