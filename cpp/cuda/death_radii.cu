// The CUDA backend's host side: input layout to launch shapes, scratch, streams and errors; the
// kernels themselves are in kernels.cuh.
#include "death_radii.cuh"
#include "kernels.cuh"

#include <cub/device/device_segmented_sort.cuh>
#include <cuda_runtime.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/iterator/transform_iterator.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>

namespace obce::cuda {
namespace {

constexpr unsigned long long kNone = ~0ull; // a flag no cloud has set

void check(cudaError_t err, const char *what) {
  if (err == cudaSuccess) return;
  cudaGetLastError(); // clear a sticky launch error so later calls start clean
  if (err == cudaErrorMemoryAllocation) throw std::runtime_error(std::string("GPU out of memory in ") + what);
  throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

void check_launch(const char *what) { check(cudaGetLastError(), what); }

// Makes `device` current for the scope of a call and restores the caller's device after, where
// it changed (the usual call is on the current device: no cudaSetDevice at all).
struct DeviceGuard {
  int previous = 0;
  bool changed = false;
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous), "cudaGetDevice");
    changed = device != previous;
    if (changed) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    if (changed) cudaSetDevice(previous);
  }
};

template <class T> T *take(const Scratch &scratch, size_t count) {
  return count ? static_cast<T *>(scratch(count * sizeof(T))) : nullptr;
}

struct SegmentOffset {
  index_t length;
  __host__ __device__ index_t operator()(index_t s) const { return s * length; }
};

// Sorts each of n_segments runs of `length` keys ascending, from `in` into `out`; at most INT_MAX
// keys a call, since CUB before CCCL 3 counts items in int.
template <class T>
void segmented_sort(const T *in, T *out, index_t n_segments, index_t length, cudaStream_t stream,
                    const Scratch &scratch) {
  const auto begins =
      thrust::make_transform_iterator(thrust::make_counting_iterator<index_t>(0), SegmentOffset{length});
  const auto ends = begins + 1;
  const index_t per_call = std::max<index_t>(1, std::numeric_limits<int>::max() / length);
  const index_t first = std::min(n_segments, per_call);
  size_t bytes = 0; // the first call's, the largest
  check(cub::DeviceSegmentedSort::SortKeys(nullptr, bytes, in, out, first * length, first, begins, ends,
                                           stream),
        "cub::DeviceSegmentedSort");
  unsigned char *temp = take<unsigned char>(scratch, bytes);
  for (index_t s0 = 0; s0 < n_segments; s0 += per_call) {
    const index_t count = std::min(per_call, n_segments - s0);
    size_t capacity = bytes;
    check(cub::DeviceSegmentedSort::SortKeys(temp, capacity, in + s0 * length, out + s0 * length,
                                             count * length, count, begins, ends, stream),
          "cub::DeviceSegmentedSort");
  }
}

unsigned grid_for(index_t items, int threads) {
  return unsigned(std::min<index_t>((items + threads - 1) / threads, 65535 * 8));
}

struct Device {
  int id, major, shared_optin, sms;
  explicit Device(int device) : id(device) {
    check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device),
          "cudaDeviceGetAttribute");
    check(cudaDeviceGetAttribute(&shared_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
          "cudaDeviceGetAttribute");
    check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  }
};

// A device's attributes, read once per process: they cannot change, and three reads cost about
// 1.2 µs a call (H200), a tenth of the 1-D BERT-base kernel's budget.
const Device &device_attributes(int device) {
  static std::mutex mutex;
  static std::map<int, Device> known; // references stay valid as devices are added
  const std::lock_guard<std::mutex> lock(mutex);
  auto found = known.find(device);
  if (found == known.end()) found = known.emplace(device, Device(device)).first;
  return found->second;
}

// A kernel may take 48 KiB of shared memory, static and dynamic, unasked; only more needs the
// attribute (1.6 µs a call on an H200). A limit an earlier call raised further still admits this
// launch.
template <class Kernel> void allow_shared_memory(Kernel *kernel, size_t bytes) {
  constexpr size_t kUnasked = 48 * 1024 - kStaticShared;
  if (bytes > kUnasked)
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),
          "cudaFuncSetAttribute");
}

template <class T>
void launch_line_death_radii(const CloudView<T> &v, T *out, unsigned long long *first_bad, const Device &dev,
                             cudaStream_t stream, const Scratch &scratch) {
  const size_t tile_bytes = size_t(v.n_points) * (kTileStride + 2 * kLineWarps) * sizeof(T);
  if (tile_bytes <= size_t(dev.shared_optin)) {
    allow_shared_memory(line_tile_kernel<T>, tile_bytes);
    const unsigned blocks = unsigned((v.n_clouds + kTileClouds - 1) / kTileClouds);
    line_tile_kernel<T><<<blocks, kLineWarps * 32, tile_bytes, stream>>>(v, out, first_bad);
    check_launch("line_tile_kernel");
    return;
  }
  const size_t per_warp = 2 * size_t(v.n_points) * sizeof(T);
  int warps = int(std::min<size_t>(kLineWarps, dev.shared_optin / per_warp));
  key_t<T> *buckets = take<key_t<T>>(scratch, warps ? 0 : 2 * size_t(v.n_clouds) * v.n_points);
  const size_t shared = warps ? warps * per_warp : 0;
  if (!warps) warps = kLineWarps;
  allow_shared_memory(line_death_radii_kernel<T>, shared);
  const unsigned blocks = unsigned((v.n_clouds + warps - 1) / warps);
  line_death_radii_kernel<T><<<blocks, warps * 32, shared, stream>>>(v, out, first_bad, buckets);
  check_launch("line_death_radii_kernel");
}

// The matrix path, in chunks of clouds whose matrices fit the scratch budget (half the free memory,
// at most kMatrixBudget). Returns false, launching nothing, where one cloud's matrix does not fit.
template <class T>
bool launch_prim_matrix(const CloudView<T> &v, T *out, bool all_edges, unsigned long long *first_bad,
                        const Device &dev, cudaStream_t stream, const Scratch &scratch) {
  const index_t n = v.n_points;
  const size_t per_cloud = size_t(n) * size_t(n) * sizeof(T), dist_bytes = size_t(n) * sizeof(T);
  if (dist_bytes + kStaticShared > size_t(dev.shared_optin)) return false;
  size_t free_bytes = 0, total_bytes = 0;
  check(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
  const size_t budget = std::min(free_bytes / 2, kMatrixBudget);
  if (per_cloud > budget) return false;
  const index_t chunk = index_t(std::min<size_t>({size_t(v.n_clouds), budget / per_cloud, 65535}));
  T *matrices = take<T>(scratch, size_t(chunk) * per_cloud / sizeof(T));
  const unsigned tiles = unsigned((n + kPairTile - 1) / kPairTile);
  const int threads = prim_matrix_threads(n);
  allow_shared_memory(prim_matrix_kernel<T>, dist_bytes);
  for (index_t c0 = 0; c0 < v.n_clouds; c0 += chunk) {
    CloudView<T> part = v;
    part.data = v.cloud(c0);
    part.n_clouds = std::min(chunk, v.n_clouds - c0);
    pairwise_kernel<T><<<dim3(tiles, tiles, unsigned(part.n_clouds)), 256, 0, stream>>>(part, matrices);
    check_launch("pairwise_kernel");
    prim_matrix_kernel<T><<<unsigned(part.n_clouds), threads, dist_bytes, stream>>>(matrices, n, c0, out,
                                                                                    all_edges, first_bad);
    check_launch("prim_matrix_kernel");
  }
  return true;
}

enum class PrimPath { automatic, matrix, cluster };

// OBCE_CUDA_PRIM=matrix or cluster forces one path (for tests and benchmarks of each); unset or
// empty: chosen per call.
PrimPath prim_path_setting() {
  const char *value = std::getenv("OBCE_CUDA_PRIM");
  const std::string path = value ? value : "";
  if (path == "") return PrimPath::automatic;
  if (path == "matrix") return PrimPath::matrix;
  if (path == "cluster") return PrimPath::cluster;
  throw std::invalid_argument("OBCE_CUDA_PRIM must be matrix or cluster, got '" + path + "'");
}

template <class T>
void launch_prim(const CloudView<T> &v, T *out, bool all_edges, unsigned long long *first_bad,
                 const Device &dev, cudaStream_t stream, const Scratch &scratch) {
  constexpr index_t points_per_block = 256;
  const unsigned cluster =
      dev.major >= 9
          ? unsigned(std::clamp<index_t>((v.n_points + points_per_block - 1) / points_per_block, 1, 8))
          : 1;
  PrimShape shape{(v.n_points + cluster - 1) / cluster, 0};
  const size_t base = (shape.per_block + v.dim) * sizeof(T);
  const index_t stride = shape.per_block | 1; // odd row stride: the winner's column reads spread over banks
  const size_t with_coords = base + size_t(v.dim) * stride * sizeof(T);
  if (with_coords + kStaticShared <= size_t(dev.shared_optin)) shape.coord_stride = stride;
  // The matrix path (one block per cloud) waits on ceil(n / (kRowLoads * 1024)) dependent row loads
  // a step; past two, the cluster kernel with coordinates in shared memory steps faster (H200:
  // 1 x 20,000 x 8 took 144 ms by the matrix, 95 ms by the cluster kernel; benchmarks/gpu_notes.md).
  const PrimPath path = prim_path_setting();
  const bool cluster_first =
      path == PrimPath::cluster ||
      (path == PrimPath::automatic && shape.coord_stride && v.n_points > 2 * kRowLoads * 1024);
  if (!cluster_first && launch_prim_matrix(v, out, all_edges, first_bad, dev, stream, scratch)) return;
  if (base + kStaticShared > size_t(dev.shared_optin))
    throw std::invalid_argument("a cloud of " + std::to_string(v.n_points) + " points in " +
                                std::to_string(v.dim) + " dimensions needs " + std::to_string(base / 1024) +
                                " KiB of shared memory a block, over this GPU's " +
                                std::to_string(dev.shared_optin / 1024) + " KiB: compute it on the CPU");
  const size_t shared = shape.coord_stride ? with_coords : base;
  const int threads = int(std::clamp<index_t>((shape.per_block + 31) / 32 * 32, 64, 512));
  allow_shared_memory(prim_kernel<T>, shared);

  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(unsigned(v.n_clouds * cluster));
  config.blockDim = dim3(threads);
  config.dynamicSmemBytes = shared;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeClusterDimension;
  attribute[0].val.clusterDim.x = cluster;
  attribute[0].val.clusterDim.y = 1;
  attribute[0].val.clusterDim.z = 1;
  config.attrs = attribute;
  config.numAttrs = cluster > 1 ? 1 : 0;
  check(cudaLaunchKernelEx(&config, prim_kernel<T>, v, shape, cluster, out, all_edges, first_bad),
        "prim_kernel launch");
  check_launch("prim_kernel");
}

// Runs `body` and reports what it found, read back in one copy: the first non-finite cloud (a flag
// the kernels fill) and the first cloud out of range (a check of the n_clouds rows of `row_length`
// ascending deaths at `rows`). Unchecked calls pass no flag: no allocation, no memset, nothing to wait for.
template <class T, class Body>
Findings with_findings(int device, std::uintptr_t stream_handle, const Scratch &scratch, bool check_finite,
                       const CloudView<T> &v, const T *rows, index_t row_length, Body body) {
  DeviceGuard guard(device);
  const Device &dev = device_attributes(device);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  if (!check_finite) {
    body(dev, stream, nullptr);
    return {};
  }
  unsigned long long *flags = take<unsigned long long>(scratch, 2), found[2];
  check(cudaMemsetAsync(flags, 0xff, sizeof found, stream), "cudaMemsetAsync");
  body(dev, stream, flags);
  constexpr int threads = 256;
  out_of_range_kernel<T><<<grid_for(v.n_clouds, threads), threads, 0, stream>>>(
      rows, v.n_clouds, row_length, least_precise_death<T>(v.dim), flags + 1);
  check_launch("out_of_range_kernel");
  check(cudaMemcpyAsync(found, flags, sizeof found, cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  const auto cloud = [](unsigned long long flag) { return flag == kNone ? index_t(-1) : index_t(flag); };
  return {cloud(found[0]), cloud(found[1])};
}

} // namespace

template <class T>
Findings death_radii(const CloudView<T> &v, T *out, int device, std::uintptr_t stream, const Scratch &scratch,
                     bool check_finite) {
  if (v.n_clouds == 0) return {};
  return with_findings(device, stream, scratch, check_finite, v, out, 1,
                       [&](const Device &dev, cudaStream_t s, unsigned long long *bad) {
                         if (v.dim == 1)
                           launch_line_death_radii(v, out, bad, dev, s, scratch);
                         else
                           launch_prim(v, out, false, bad, dev, s, scratch);
                       });
}

template <class T>
Findings h0_deaths(const CloudView<T> &v, T *out, int device, std::uintptr_t stream, const Scratch &scratch,
                   bool check_finite) {
  if (v.n_clouds == 0) return {};
  // Rows ascend: each one's last death is λ.
  return with_findings(
      device, stream, scratch, check_finite, v, out, v.n_points - 1,
      [&](const Device &dev, cudaStream_t s, unsigned long long *bad) {
        const index_t n = v.n_points, n_gaps = v.n_clouds * (n - 1);
        constexpr int threads = 256;
        if (v.dim == 1) {
          T *values = take<T>(scratch, v.n_clouds * n), *sorted = take<T>(scratch, v.n_clouds * n);
          gather_lines_kernel<T><<<grid_for(v.n_clouds * n, threads), threads, 0, s>>>(v, values, bad);
          check_launch("gather_lines_kernel");
          segmented_sort(values, sorted, v.n_clouds, n, s, scratch);
          // values now holds the unsorted gaps, sorted into out
          gaps_kernel<T><<<grid_for(n_gaps, threads), threads, 0, s>>>(sorted, v.n_clouds, n, values);
          check_launch("gaps_kernel");
          segmented_sort(values, out, v.n_clouds, n - 1, s, scratch);
        } else {
          T *edges = take<T>(scratch, n_gaps);
          launch_prim(v, edges, true, bad, dev, s, scratch);
          segmented_sort(edges, out, v.n_clouds, n - 1, s, scratch);
        }
      });
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::string device_name(int device) {
  cudaDeviceProp prop;
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  return prop.name;
}

template Findings death_radii<float>(const CloudView<float> &, float *, int, std::uintptr_t, const Scratch &,
                                     bool);
template Findings death_radii<double>(const CloudView<double> &, double *, int, std::uintptr_t,
                                      const Scratch &, bool);
template Findings h0_deaths<float>(const CloudView<float> &, float *, int, std::uintptr_t, const Scratch &,
                                   bool);
template Findings h0_deaths<double>(const CloudView<double> &, double *, int, std::uintptr_t, const Scratch &,
                                    bool);

} // namespace obce::cuda
