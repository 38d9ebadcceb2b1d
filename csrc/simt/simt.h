// SIMT: the CUDA kernel sources of csrc/cuda/, compiled as host C++ and run
// on the CPU, so that CI executes them without a GPU (docs/design.md, "CUDA
// verification").
//
// Every CUDA thread of a block is a fiber with its own stack; one OS thread
// runs a block's fibers, switching between them only at the points where
// CUDA threads synchronise or exchange values (__syncthreads, __syncwarp,
// shuffles, grid.sync). ThreadSanitizer sees every CUDA thread as a thread of
// its own and only the synchronisation CUDA gives; AddressSanitizer sees
// exact-size shared memory. runtime.cpp holds the scheduler.
//
// This header is what the kernel sources see (the first half: CUDA's
// keywords, built-in indices and intrinsics) and what csrc/cuda/compat.cuh
// calls on the host (the second half: launches, the emulated device,
// workspace memory). It needs no torch or CUDA header.
//
// Only what has a shim here may be used in a kernel: an intrinsic without one
// fails to compile in the SIMT build. Shuffles and __syncwarp take the full
// mask only (a partial mask is an error: fibers cannot emulate divergence).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <source_location>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ------------------------------------------------------------ CUDA keywords
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

namespace fusedrnn::simt {

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// Every misuse the runtime detects (launch rules, deadlock, divergent
// barrier, partial mask, watchdog) is thrown as an Error at the launch site.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

using Location = std::source_location;

// ------------------------------------------------ called from kernel code
dim3 thread_idx();
dim3 block_idx();
dim3 block_dim();
dim3 grid_dim();
void* dynamic_shared_memory();
void sync_threads(Location where);
void sync_warp(unsigned mask, Location where);
void sync_grid(Location where);

enum class ShuffleKind { index, up, down, bfly };
// Exchanges the 8-byte `bits` of every lane of the warp; returns the source
// lane's bits (the lane's own where CUDA leaves the value unchanged).
std::uint64_t shuffle(unsigned mask, std::uint64_t bits, ShuffleKind kind, int operand, int width,
                      Location where);

template <typename T>
T shuffle_value(unsigned mask, T value, ShuffleKind kind, int operand, int width,
                Location where) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffle: up to 8 bytes");
  std::uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = shuffle(mask, bits, kind, operand, width, where);
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

}  // namespace fusedrnn::simt

// -------------------------------------- CUDA's names, as kernels spell them
using dim3 = fusedrnn::simt::dim3;
using uint3 = fusedrnn::simt::dim3;

#define threadIdx (::fusedrnn::simt::thread_idx())
#define blockIdx (::fusedrnn::simt::block_idx())
#define blockDim (::fusedrnn::simt::block_dim())
#define gridDim (::fusedrnn::simt::grid_dim())
constexpr int warpSize = 32;

inline void __syncthreads(fusedrnn::simt::Location where = fusedrnn::simt::Location::current()) {
  fusedrnn::simt::sync_threads(where);
}

inline void __syncwarp(unsigned mask = 0xffffffffu,
                       fusedrnn::simt::Location where = fusedrnn::simt::Location::current()) {
  fusedrnn::simt::sync_warp(mask, where);
}

template <typename T>
T __shfl_sync(unsigned mask, T value, int src_lane, int width = warpSize,
              fusedrnn::simt::Location where = fusedrnn::simt::Location::current()) {
  return fusedrnn::simt::shuffle_value(mask, value, fusedrnn::simt::ShuffleKind::index, src_lane,
                                       width, where);
}

template <typename T>
T __shfl_up_sync(unsigned mask, T value, unsigned delta, int width = warpSize,
                 fusedrnn::simt::Location where = fusedrnn::simt::Location::current()) {
  return fusedrnn::simt::shuffle_value(mask, value, fusedrnn::simt::ShuffleKind::up,
                                       static_cast<int>(delta), width, where);
}

template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = warpSize,
                   fusedrnn::simt::Location where = fusedrnn::simt::Location::current()) {
  return fusedrnn::simt::shuffle_value(mask, value, fusedrnn::simt::ShuffleKind::down,
                                       static_cast<int>(delta), width, where);
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = warpSize,
                  fusedrnn::simt::Location where = fusedrnn::simt::Location::current()) {
  return fusedrnn::simt::shuffle_value(mask, value, fusedrnn::simt::ShuffleKind::bfly, lane_mask,
                                       width, where);
}

// Cache-hint loads: a plain load on the CPU.
template <typename T>
T __ldcg(const T* p) {
  return *p;
}

// CUDA's device min/max overloads (fmaf, fma, expf, tanhf, ... are <cmath>'s).
#define FUSEDRNN_SIMT_MIN_MAX(T)                        \
  inline T min(T a, T b) { return b < a ? b : a; }      \
  inline T max(T a, T b) { return a < b ? b : a; }
FUSEDRNN_SIMT_MIN_MAX(int)
FUSEDRNN_SIMT_MIN_MAX(unsigned)
FUSEDRNN_SIMT_MIN_MAX(long)
FUSEDRNN_SIMT_MIN_MAX(unsigned long)
FUSEDRNN_SIMT_MIN_MAX(long long)
FUSEDRNN_SIMT_MIN_MAX(unsigned long long)
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
#undef FUSEDRNN_SIMT_MIN_MAX

namespace cooperative_groups {
// The grid of a cooperative launch; sync() outside one is an error.
class grid_group {
 public:
  void sync(fusedrnn::simt::Location where = fusedrnn::simt::Location::current()) const {
    fusedrnn::simt::sync_grid(where);
  }
};
inline grid_group this_grid() { return {}; }
}  // namespace cooperative_groups

#include "half.h"  // __nv_bfloat16, __half and their conversions

// ============================================================= host side
namespace fusedrnn::simt {

// The emulated GPU: an H100 (SXM) by default. Registers are not emulated:
// occupancy comes from threads and shared memory only (the ptxas report
// covers registers).
struct Device {
  int sm_count = 132;
  std::int64_t shared_per_sm = 228 * 1024;
  std::int64_t shared_per_block_optin = 227 * 1024;  // with cudaFuncSetAttribute
  std::int64_t shared_per_block = 48 * 1024;         // without it
  std::int64_t reserved_shared_per_block = 1024;     // taken by the system per block
  int max_threads_per_sm = 2048;
  int max_threads_per_block = 1024;
  int max_blocks_per_sm = 32;
  bool cooperative_launch = true;
};

Device device();
void set_device(const Device& device);  // for tests: force other plans
// Seconds a block waits at the grid barrier before the launch fails.
void set_watchdog_seconds(double seconds);
double watchdog_seconds();

using KernelId = const void*;
template <typename... Params>
KernelId kernel_id(void (*kernel)(Params...)) {
  return reinterpret_cast<KernelId>(kernel);
}

// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes).
void set_max_dynamic_shared(KernelId kernel, std::int64_t bytes);
// cudaOccupancyMaxActiveBlocksPerMultiprocessor, from threads and shared memory.
int max_active_blocks_per_sm(KernelId kernel, int threads, std::int64_t dynamic_shared);

struct LaunchConfig {
  KernelId kernel;
  dim3 grid, block;
  std::size_t dynamic_shared;
  bool cooperative;
};

// Runs `thread_body` as every thread of the grid and returns when all are
// done. Returns false, running nothing, for a cooperative grid larger than
// occupancy x SMs (cudaErrorCooperativeLaunchTooLarge); throws Error for any
// other misuse. A non-cooperative grid runs one block at a time; a
// cooperative one runs all its blocks at once, one OS thread each.
bool run(const LaunchConfig& config, const std::function<void()>& thread_body);

// Launches so far per kernel (the kernel-coverage check of the tests).
std::vector<std::pair<KernelId, std::int64_t>> launch_counts();
void reset_launch_counts();

// kernel<<<grid, block, shared, stream>>>(args...): FUSEDRNN_LAUNCH in compat.cuh.
struct Stream {};

template <typename... Params>
class Launch {
 public:
  Launch(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared, Stream)
      : kernel_(kernel), grid_(grid), block_(block), shared_(shared) {}

  template <typename... Args>
  void operator()(Args&&... args) const {
    // Converted once, as a launch copies its arguments; each thread then
    // receives its own copy through the by-value parameters.
    const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
    auto kernel = kernel_;
    run({kernel_id(kernel_), grid_, block_, shared_, false},
        [&params, kernel] { std::apply(kernel, params); });
  }

 private:
  void (*kernel_)(Params...);
  dim3 grid_, block_;
  std::size_t shared_;
};

template <typename... Params, typename... Args>
bool launch_cooperative(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared,
                        Stream, Args&&... args) {
  const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  return run({kernel_id(kernel), grid, block, shared, true},
             [&params, kernel] { std::apply(kernel, params); });
}

// Device memory for a workspace: an exact-size heap buffer filled with NaN
// bytes (0xFF), so an unwritten read shows up in the results.
class Buffer {
 public:
  explicit Buffer(std::size_t bytes);
  ~Buffer();
  Buffer(Buffer&& other) noexcept : data_(std::exchange(other.data_, nullptr)) {}
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer& operator=(Buffer&&) = delete;
  void* get() const { return data_; }

 private:
  void* data_;
};

}  // namespace fusedrnn::simt
