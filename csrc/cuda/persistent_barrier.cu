// The pieces of the persistent path not tied to one cell: the grid-barrier
// micro-benchmark (the per-step floor of the persistent kernels) and
// max_hidden (the planning bound, exposed as fusedrnn_debug::persistent_max_hidden).
#include <c10/util/Exception.h>

#include "persistent.cuh"

namespace fusedrnn::cuda::persistent {

namespace {

// `steps` grid barriers and nothing else, at the persistent kernels' block
// size, so the number compares with their per-step time.
__global__ void __launch_bounds__(kThreads, 1) barrier_kernel(int64_t steps) {
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();
  for (int64_t s = 0; s < steps; ++s) grid.sync();
}

// A timing event that is destroyed on every path out of barrier_microbench.
struct TimingEvent {
  cudaEvent_t event = nullptr;
  TimingEvent() { C10_CUDA_CHECK(cudaEventCreate(&event)); }
  ~TimingEvent() { (void)cudaEventDestroy(event); }
  TimingEvent(const TimingEvent&) = delete;
  TimingEvent& operator=(const TimingEvent&) = delete;
};

}  // namespace

double barrier_microbench(int64_t steps, int64_t blocks) {
  TORCH_CHECK(steps >= 0, "barrier_microbench: steps must be >= 0, got ", steps);
  TORCH_CHECK(blocks >= 1, "barrier_microbench: blocks must be >= 1, got ", blocks);
  const int device = c10::cuda::current_device();
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(device);
  TORCH_CHECK(prop->cooperativeLaunch, "barrier_microbench: device ", device,
              " does not support cooperative launch");
  int blocks_per_sm = 0;
  C10_CUDA_CHECK(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, barrier_kernel, kThreads, 0));
  const int64_t capacity = int64_t{blocks_per_sm} * prop->multiProcessorCount;
  // Refuse rather than hang: a grid barrier over blocks that cannot all be
  // resident would never complete.
  TORCH_CHECK(blocks <= capacity, "barrier_microbench: ", blocks,
              " blocks cannot be co-resident (at most ", capacity, ")");

  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  TimingEvent start, stop;
  void* args[] = {&steps};
  C10_CUDA_CHECK(cudaEventRecord(start.event, stream));
  C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(barrier_kernel),
                                             dim3(static_cast<unsigned>(blocks)), dim3(kThreads),
                                             args, 0, stream));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  C10_CUDA_CHECK(cudaEventRecord(stop.event, stream));
  C10_CUDA_CHECK(cudaEventSynchronize(stop.event));
  float ms = 0.0f;
  C10_CUDA_CHECK(cudaEventElapsedTime(&ms, start.event, stop.event));
  return 1000.0 * static_cast<double>(ms);  // ms -> us
}

template <typename T>
int64_t max_hidden(int num_gates) {
  TORCH_CHECK(num_gates == 3 || num_gates == 4, "max_hidden: num_gates must be 3 or 4");
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(c10::cuda::current_device());
  if (!prop->cooperativeLaunch) return 0;
  // The shared memory need grows with H, so the accepted sizes are 1..max:
  // find the largest by bisection on the same plan the launch uses (batch 1,
  // the least shared memory).
  auto fits = [&](int64_t h) {
    Tiling tiling;
    int64_t smem = 0;
    return plan_tiling(h, 1, num_gates, sizeof(T), prop->multiProcessorCount,
                       static_cast<int64_t>(prop->sharedMemPerBlockOptin), &tiling, &smem);
  };
  if (!fits(1)) return 0;
  int64_t lo = 1, hi = static_cast<int64_t>(prop->sharedMemPerBlockOptin) / sizeof(T) + 1;
  while (hi - lo > 1) {  // invariant: fits(lo), !fits(hi)
    const int64_t mid = lo + (hi - lo) / 2;
    if (fits(mid))
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

template int64_t max_hidden<float>(int);
template int64_t max_hidden<double>(int);

}  // namespace fusedrnn::cuda::persistent
