// The Python bindings: the only file that knows Python. Arrays arrive as DLPack capsules (zero
// copy for numpy and torch, CPU or CUDA); validation with user-facing messages is done in
// python/obce/kernel.py, so the checks here only guard memory safety.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../cpu/death_radii.hpp"
#include "dlpack.hpp"
#ifdef OBCE_WITH_CUDA
#include "../cuda/death_radii.cuh"
#endif

namespace py = pybind11;
using obce::index_t;

namespace {

// Takes ownership of a DLPack capsule's tensor (renaming it "used_…" as the protocol asks) and
// calls the producer's deleter when done. A capsule refused is left unused, so that its own
// destructor still frees the tensor.
class BorrowedTensor {
public:
  BorrowedTensor(const py::capsule &capsule, bool writable) {
    PyObject *obj = capsule.ptr();
    if (PyCapsule_IsValid(obj, "dltensor_versioned")) {
      auto *versioned =
          static_cast<DLManagedTensorVersioned *>(PyCapsule_GetPointer(obj, "dltensor_versioned"));
      if (versioned->version.major != 1) throw std::invalid_argument("unsupported DLPack major version");
      if (writable && (versioned->flags & kDLFlagReadOnly))
        throw std::invalid_argument("output array is read-only");
      PyCapsule_SetName(obj, "used_dltensor_versioned");
      versioned_ = versioned;
      tensor_ = &versioned_->dl_tensor;
    } else if (PyCapsule_IsValid(obj, "dltensor")) {
      legacy_ = static_cast<DLManagedTensor *>(PyCapsule_GetPointer(obj, "dltensor"));
      PyCapsule_SetName(obj, "used_dltensor");
      tensor_ = &legacy_->dl_tensor;
    } else {
      throw std::invalid_argument("expected an unused DLPack capsule");
    }
  }
  ~BorrowedTensor() {
    if (versioned_ && versioned_->deleter) versioned_->deleter(versioned_);
    if (legacy_ && legacy_->deleter) legacy_->deleter(legacy_);
  }
  BorrowedTensor(const BorrowedTensor &) = delete;
  BorrowedTensor &operator=(const BorrowedTensor &) = delete;

  const DLTensor &operator*() const { return *tensor_; }
  const DLTensor *operator->() const { return tensor_; }
  int64_t stride(int axis) const {
    if (tensor_->strides) return tensor_->strides[axis];
    int64_t s = 1;
    for (int a = tensor_->ndim - 1; a > axis; --a) s *= tensor_->shape[a];
    return s;
  }
  template <class T> T *data() const {
    return reinterpret_cast<T *>(static_cast<char *>(tensor_->data) + tensor_->byte_offset);
  }

private:
  DLManagedTensorVersioned *versioned_ = nullptr;
  DLManagedTensor *legacy_ = nullptr;
  DLTensor *tensor_ = nullptr;
};

// A 2-D input is an (n_points, n_neurons) activation matrix: one 1-D cloud per column.
template <class T> obce::CloudView<T> cloud_view(const BorrowedTensor &t) {
  if (t->ndim == 2) return {t.data<T>(), t->shape[1], t->shape[0], 1, t.stride(1), t.stride(0), 0};
  if (t->ndim == 3)
    return {t.data<T>(), t->shape[0], t->shape[1], t->shape[2], t.stride(0), t.stride(1), t.stride(2)};
  throw std::invalid_argument("expected a 2-D or 3-D array");
}

bool is_cuda(const DLDevice &d) { return d.device_type == kDLCUDA || d.device_type == kDLCUDAManaged; }

// What a call computes: λ per cloud, or every finite death.
enum class Operation { death_radii, h0_deaths };

#ifdef OBCE_WITH_CUDA
// The CUDA backend's scratch from a Python callable (bytes -> a tensor on the call's device and
// stream, e.g. torch.empty): held until the call returns, then left to the caller's allocator,
// which orders its reuse after the call's kernels on that stream.
class PythonScratch {
public:
  explicit PythonScratch(const py::object &allocate) : allocate_(allocate) {}
  void *operator()(std::size_t bytes) {
    if (allocate_.is_none()) throw std::invalid_argument("GPU scratch needs an allocator (pass scratch=)");
    py::gil_scoped_acquire gil;
    held_.push_back(allocate_(bytes));
    return reinterpret_cast<void *>(held_.back().attr("data_ptr")().cast<std::uintptr_t>());
  }

private:
  const py::object &allocate_;
  std::vector<py::object> held_; // released when run() returns, which holds the GIL again by then
};
#endif

// Runs Python's signal handlers on the calling thread (the one that released the GIL): true when
// one raised, e.g. KeyboardInterrupt for Ctrl-C, which then stays set for error_already_set.
bool python_signal_raised() {
  py::gil_scoped_acquire gil;
  return PyErr_CheckSignals() != 0;
}

template <class T>
obce::Findings run(Operation op, const obce::CloudView<T> &v, T *out, const DLDevice &device, int n_threads,
                   std::uintptr_t stream, [[maybe_unused]] const py::object &scratch, bool check_finite) {
  if (is_cuda(device)) {
#ifdef OBCE_WITH_CUDA
    PythonScratch held(scratch);
    py::gil_scoped_release release;
    const obce::cuda::Scratch allocate = std::ref(held);
    return op == Operation::death_radii
               ? obce::cuda::death_radii(v, out, device.device_id, stream, allocate, check_finite)
               : obce::cuda::h0_deaths(v, out, device.device_id, stream, allocate, check_finite);
#else
    throw std::runtime_error(
        "obce was built without CUDA: reinstall on a machine with nvcc, or pass a CPU array");
#endif
  }
  // The CPU kernels check the input and the range always (it costs nothing there): no check_finite.
  try {
    py::gil_scoped_release release;
    return op == Operation::death_radii ? obce::cpu::death_radii(v, out, n_threads, python_signal_raised)
                                        : obce::cpu::h0_deaths(v, out, n_threads, python_signal_raised);
  } catch (const obce::cpu::Interrupted &) {
    throw py::error_already_set(); // the GIL is held again here
  }
}

std::pair<index_t, index_t> compute(Operation op, const py::capsule &acts_capsule,
                                    const py::capsule &out_capsule, int n_threads, std::uintptr_t stream,
                                    bool check_finite, const py::object &scratch) {
  BorrowedTensor acts(acts_capsule, false), out(out_capsule, true);
  const DLDataType dt = acts->dtype;
  if (dt.code != kDLFloat || (dt.bits != 32 && dt.bits != 64) || dt.lanes != 1)
    throw std::invalid_argument("expected float32 or float64 input");
  if (std::memcmp(&dt, &out->dtype, sizeof dt) != 0)
    throw std::invalid_argument("output dtype differs from input");
  if (acts->device.device_type != out->device.device_type || acts->device.device_id != out->device.device_id)
    throw std::invalid_argument("output is on another device than the input");
  if (acts->device.device_type != kDLCPU && !is_cuda(acts->device))
    throw std::invalid_argument("input must be in CPU or CUDA memory");

  const bool f64 = dt.bits == 64;
  const obce::CloudView<float> v32 = f64 ? obce::CloudView<float>{} : cloud_view<float>(acts);
  const obce::CloudView<double> v64 = f64 ? cloud_view<double>(acts) : obce::CloudView<double>{};
  const index_t n_clouds = f64 ? v64.n_clouds : v32.n_clouds, n_points = f64 ? v64.n_points : v32.n_points;
  if (n_points < 2) throw std::invalid_argument("a cloud needs at least 2 points");
  const index_t expected = op == Operation::death_radii ? n_clouds : n_clouds * (n_points - 1);
  index_t out_size = 1;
  for (int a = 0; a < out->ndim; ++a) out_size *= out->shape[a];
  if (out_size != expected || out.stride(out->ndim - 1) != 1 ||
      (out->ndim == 2 && out.stride(0) != n_points - 1))
    throw std::invalid_argument("output must be a contiguous array of the result's shape");

  const obce::Findings found =
      f64 ? run(op, v64, out.data<double>(), acts->device, n_threads, stream, scratch, check_finite)
          : run(op, v32, out.data<float>(), acts->device, n_threads, stream, scratch, check_finite);
  return {found.first_bad, found.first_out_of_range};
}

py::dict build_info() {
  py::dict info;
  info["version"] = OBCE_VERSION;
  info["openmp"] = obce::cpu::has_openmp();
  info["threads"] = obce::cpu::default_threads();
  info["cpu_simd"] = obce::cpu::simd_level();
#ifdef OBCE_WITH_CUDA
  info["cuda"] = true;
  info["cuda_version"] = OBCE_CUDA_VERSION;
  info["cuda_archs"] = OBCE_CUDA_ARCHS;
  std::vector<std::string> gpus;
  for (int d = 0, n = obce::cuda::device_count(); d < n; ++d) gpus.push_back(obce::cuda::device_name(d));
  info["gpus"] = gpus;
#else
  info["cuda"] = false;
  info["cuda_version"] = py::none();
  info["cuda_archs"] = py::none();
  info["gpus"] = std::vector<std::string>{};
#endif
  return info;
}

} // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "obce's compiled kernels; use the wrappers in obce.kernel";
  // pybind11 turns std::invalid_argument into ValueError and std::runtime_error into RuntimeError.
  const char *args_doc =
      "(acts, out, n_threads, stream, check_finite, scratch=None) -> (first non-finite cloud, first "
      "cloud whose lambda is out of range), -1 for none; scratch: bytes -> a tensor on a CUDA input's "
      "device and stream (torch.empty)";
  for (const auto &[name, op] :
       {std::pair{"death_radii", Operation::death_radii}, std::pair{"h0_deaths", Operation::h0_deaths}}) {
    const Operation operation = op; // a lambda cannot capture a structured binding before C++20
    m.def(
        name,
        [operation](const py::capsule &a, const py::capsule &o, int t, std::uintptr_t s, bool c,
                    const py::object &scratch) { return compute(operation, a, o, t, s, c, scratch); },
        py::arg("acts"), py::arg("out"), py::arg("n_threads"), py::arg("stream"), py::arg("check_finite"),
        py::arg("scratch") = py::none(), args_doc);
  }
  m.def("build_info", &build_info, "What was compiled in, and the GPUs usable now");
}
