// Where the kernel sources meet a runtime: CUDA (through ATen) under nvcc,
// the SIMT emulator of csrc/simt/ otherwise, so that every file in this
// folder compiles unchanged both ways and CI can run it on the CPU.
//
// Kernel code uses two macros instead of CUDA syntax the host compiler
// cannot read:
//   FUSEDRNN_LAUNCH(kernel, grid, block, shared, stream)(args...)
//       is kernel<<<grid, block, shared, stream>>>(args...);
//   FUSEDRNN_DYNAMIC_SHARED(type, name);
//       is extern __shared__ __align__(16) type name[];
// and host code calls the functions below instead of the CUDA runtime.
// Anything else a kernel uses (intrinsics, inline PTX) needs a shim in
// csrc/simt/ (simt.h, half.h), or the SIMT build fails to compile.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <tuple>
#include <type_traits>

#if defined(__CUDACC__)

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#define FUSEDRNN_LAUNCH(kernel, grid, block, shared, stream) \
  kernel<<<(grid), (block), (shared), (stream)>>>
#define FUSEDRNN_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#define FUSEDRNN_CHECK(cond, ...) TORCH_CHECK(cond, __VA_ARGS__)

#else  // the SIMT build

#include <chrono>
#include <sstream>

#include "simt/simt.h"

#define FUSEDRNN_LAUNCH(kernel, grid, block, shared, stream) \
  ::fusedrnn::simt::Launch((kernel), (grid), (block), (shared), (stream))
#define FUSEDRNN_DYNAMIC_SHARED(type, name) \
  type* const name = static_cast<type*>(::fusedrnn::simt::dynamic_shared_memory())
#define FUSEDRNN_CHECK(cond, ...) \
  ((cond) ? (void)0 : ::fusedrnn::cuda::compat::check_failed(__VA_ARGS__))

#endif

namespace fusedrnn::cuda::compat {

// Dynamic shared memory a kernel may use without cudaFuncSetAttribute.
constexpr std::int64_t kDefaultSharedBytes = 48 * 1024;

// What the persistent path plans with.
struct DeviceInfo {
  int sm_count;
  std::int64_t shared_per_block_optin;
  bool cooperative_launch;
};

#if defined(__CUDACC__)

using Stream = cudaStream_t;

inline Stream current_stream() { return at::cuda::getCurrentCUDAStream(); }

// After an ordinary launch: a bad configuration surfaces here.
inline void check_launch() { C10_CUDA_KERNEL_LAUNCH_CHECK(); }

inline DeviceInfo current_device() {
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(c10::cuda::current_device());
  return {prop->multiProcessorCount, static_cast<std::int64_t>(prop->sharedMemPerBlockOptin),
          prop->cooperativeLaunch != 0};
}

template <typename... Params>
void set_max_dynamic_shared(void (*kernel)(Params...), std::int64_t bytes) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
}

template <typename... Params>
int max_active_blocks_per_sm(void (*kernel)(Params...), int threads, std::int64_t shared) {
  int blocks = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads,
                                                               static_cast<std::size_t>(shared)));
  return blocks;
}

// cudaLaunchCooperativeKernel; false, with nothing launched, when the grid
// cannot be co-resident (cudaErrorCooperativeLaunchTooLarge).
template <typename... Params, typename... Args>
bool launch_cooperative(void (*kernel)(Params...), unsigned blocks, unsigned threads,
                        std::int64_t shared, Stream stream, Args&&... args) {
  std::tuple<std::decay_t<Params>...> values(std::forward<Args>(args)...);
  auto pointers = std::apply(
      [](auto&... v) { return std::array<void*, sizeof...(Params)>{static_cast<void*>(&v)...}; },
      values);
  const cudaError_t err = cudaLaunchCooperativeKernel(
      reinterpret_cast<const void*>(kernel), dim3(blocks), dim3(threads), pointers.data(),
      static_cast<std::size_t>(shared), stream);
  if (err == cudaErrorCooperativeLaunchTooLarge) {
    (void)cudaGetLastError();  // not sticky; clear it and let the caller fall back
    return false;
  }
  C10_CUDA_CHECK(err);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

// Device memory for one launch. The caching allocator is stream-ordered:
// freeing it when the host function returns is safe, later users on this
// stream run after the kernel.
class Workspace {
 public:
  explicit Workspace(std::int64_t bytes)
      : data_(c10::cuda::CUDACachingAllocator::get()->allocate(static_cast<std::size_t>(bytes))) {}
  void* get() const { return data_.get(); }

 private:
  c10::DataPtr data_;
};

// Elapsed milliseconds of the work queued on `stream` between construction
// and elapsed_ms(), measured with CUDA events (elapsed_ms waits for it).
class Stopwatch {
 public:
  explicit Stopwatch(Stream stream) : stream_(stream) {
    C10_CUDA_CHECK(cudaEventCreate(&start_));
    C10_CUDA_CHECK(cudaEventCreate(&stop_));
    C10_CUDA_CHECK(cudaEventRecord(start_, stream_));
  }
  ~Stopwatch() {
    (void)cudaEventDestroy(start_);
    (void)cudaEventDestroy(stop_);
  }
  Stopwatch(const Stopwatch&) = delete;
  Stopwatch& operator=(const Stopwatch&) = delete;

  double elapsed_ms() {
    C10_CUDA_CHECK(cudaEventRecord(stop_, stream_));
    C10_CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0.0f;
    C10_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    return static_cast<double>(ms);
  }

 private:
  Stream stream_;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

#else  // the SIMT build: launches are synchronous, errors are exceptions

using Stream = simt::Stream;

inline Stream current_stream() { return {}; }
inline void check_launch() {}  // a SIMT launch throws at the launch itself

inline DeviceInfo current_device() {
  const simt::Device d = simt::device();
  return {d.sm_count, d.shared_per_block_optin, d.cooperative_launch};
}

template <typename... Params>
void set_max_dynamic_shared(void (*kernel)(Params...), std::int64_t bytes) {
  simt::set_max_dynamic_shared(simt::kernel_id(kernel), bytes);
}

template <typename... Params>
int max_active_blocks_per_sm(void (*kernel)(Params...), int threads, std::int64_t shared) {
  return simt::max_active_blocks_per_sm(simt::kernel_id(kernel), threads, shared);
}

template <typename... Params, typename... Args>
bool launch_cooperative(void (*kernel)(Params...), unsigned blocks, unsigned threads,
                        std::int64_t shared, Stream stream, Args&&... args) {
  return simt::launch_cooperative(kernel, simt::dim3(blocks), simt::dim3(threads),
                                  static_cast<std::size_t>(shared), stream,
                                  std::forward<Args>(args)...);
}

class Workspace {
 public:
  explicit Workspace(std::int64_t bytes) : buffer_(static_cast<std::size_t>(bytes)) {}
  void* get() const { return buffer_.get(); }

 private:
  simt::Buffer buffer_;
};

class Stopwatch {
 public:
  explicit Stopwatch(Stream) : start_(std::chrono::steady_clock::now()) {}
  double elapsed_ms() const {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start_)
        .count();
  }

 private:
  std::chrono::steady_clock::time_point start_;
};

template <typename... Args>
[[noreturn]] void check_failed(const Args&... args) {
  std::ostringstream message;
  (message << ... << args);
  throw simt::Error(message.str());
}

#endif

}  // namespace fusedrnn::cuda::compat
