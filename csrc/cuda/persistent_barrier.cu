// The pieces of the persistent path not tied to one cell: the grid-barrier
// micro-benchmark (the per-step floor of the persistent kernels), max_hidden
// (the planning bound, exposed as fusedrnn_debug::persistent_max_hidden) and
// the tiling override (fusedrnn_debug::set_persistent_tiling).
#include <atomic>

#include "persistent.cuh"

namespace fusedrnn::cuda::persistent {

namespace {

// `steps` grid barriers and nothing else, at the persistent kernels' block
// size, so the number compares with their per-step time.
__global__ void __launch_bounds__(kThreads, 1) barrier_kernel(int64_t steps) {
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();
  for (int64_t s = 0; s < steps; ++s) grid.sync();
}

// Set by a debug op, read by every persistent launch.
std::atomic<int64_t> override_max_blocks{0}, override_batch_tile{0};

}  // namespace

void set_tiling_override(const TilingOverride& knobs) {
  FUSEDRNN_CHECK(knobs.max_blocks >= 0,
                 "set_persistent_tiling: max_blocks must be >= 0 (0: no cap), got ",
                 knobs.max_blocks);
  FUSEDRNN_CHECK(knobs.batch_tile >= 0 && knobs.batch_tile % kBatchGroup == 0,
                 "set_persistent_tiling: batch_tile must be 0 (the plan's own) or a positive "
                 "multiple of ", kBatchGroup, ", got ", knobs.batch_tile);
  override_max_blocks.store(knobs.max_blocks);
  override_batch_tile.store(knobs.batch_tile);
}

TilingOverride tiling_override() {
  return {.max_blocks = override_max_blocks.load(), .batch_tile = override_batch_tile.load()};
}

double barrier_microbench(int64_t steps, int64_t blocks) {
  FUSEDRNN_CHECK(steps >= 0, "barrier_microbench: steps must be >= 0, got ", steps);
  FUSEDRNN_CHECK(blocks >= 1, "barrier_microbench: blocks must be >= 1, got ", blocks);
  const compat::DeviceInfo device = compat::current_device();
  FUSEDRNN_CHECK(device.cooperative_launch,
                 "barrier_microbench: the device does not support cooperative launch");
  const int blocks_per_sm = compat::max_active_blocks_per_sm(barrier_kernel, kThreads, 0);
  const int64_t capacity = int64_t{blocks_per_sm} * device.sm_count;
  // Refuse rather than hang: a grid barrier over blocks that cannot all be
  // resident would never complete.
  FUSEDRNN_CHECK(blocks <= capacity, "barrier_microbench: ", blocks,
                 " blocks cannot be co-resident (at most ", capacity, ")");

  const compat::Stream stream = compat::current_stream();
  compat::Stopwatch stopwatch(stream);
  const bool launched = compat::launch_cooperative(barrier_kernel, static_cast<unsigned>(blocks),
                                                   kThreads, 0, stream, steps);
  FUSEDRNN_CHECK(launched, "barrier_microbench: ", blocks, " blocks cannot be co-resident");
  return 1000.0 * stopwatch.elapsed_ms();  // ms -> us
}

template <typename T>
Plan plan_for(int64_t hidden, int64_t batch, int num_gates) {
  FUSEDRNN_CHECK(num_gates >= 1 && num_gates <= 4, "persistent plan: num_gates must be 1 to 4");
  const compat::DeviceInfo device = compat::current_device();
  Tiling tiling;
  int64_t smem = 0;
  if (!device.cooperative_launch ||
      !plan_tiling(hidden, batch, num_gates, sizeof(T), device.sm_count,
                   device.shared_per_block_optin, tiling_override(), &tiling, &smem))
    return {};
  return {.units = tiling.units, .batch_tile = tiling.batch_tile,
          .blocks = ceil_div(hidden, tiling.units), .shared_bytes = smem};
}

template Plan plan_for<float>(int64_t, int64_t, int);
template Plan plan_for<double>(int64_t, int64_t, int);

template <typename T>
int64_t max_hidden(int num_gates) {
  FUSEDRNN_CHECK(num_gates >= 1 && num_gates <= 4, "max_hidden: num_gates must be 1 to 4");
  const compat::DeviceInfo device = compat::current_device();
  if (!device.cooperative_launch) return 0;
  // The shared memory need grows with H, so the accepted sizes are 1..max:
  // find the largest by bisection on the same plan the launch uses (batch 1,
  // the least shared memory).
  const TilingOverride knobs = tiling_override();
  auto fits = [&](int64_t h) {
    Tiling tiling;
    int64_t smem = 0;
    return plan_tiling(h, 1, num_gates, sizeof(T), device.sm_count,
                       device.shared_per_block_optin, knobs, &tiling, &smem);
  };
  if (!fits(1)) return 0;
  int64_t lo = 1, hi = device.shared_per_block_optin / static_cast<int64_t>(sizeof(T)) + 1;
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
