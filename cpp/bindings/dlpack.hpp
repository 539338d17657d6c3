// The DLPack ABI (dmlc/dlpack, v1.0), the subset a consumer reads. The structs are a stable C ABI
// shared by numpy, torch, cupy and jax, so they are declared here rather than vendored.
#pragma once
#include <cstdint>

extern "C" {
enum DLDeviceType : int32_t { kDLCPU = 1, kDLCUDA = 2, kDLCUDAManaged = 13 };
enum DLDataTypeCode : uint8_t { kDLFloat = 2 };
struct DLDevice {
  int32_t device_type;
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void *data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t *shape;
  int64_t *strides; // in elements; null means compact row-major
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void *manager_ctx;
  void (*deleter)(DLManagedTensor *self);
};
struct DLPackVersion {
  uint32_t major;
  uint32_t minor;
};
constexpr uint64_t kDLFlagReadOnly = 1ull << 0;
struct DLManagedTensorVersioned {
  DLPackVersion version;
  void *manager_ctx;
  void (*deleter)(DLManagedTensorVersioned *self);
  uint64_t flags;
  DLTensor dl_tensor;
};
}
