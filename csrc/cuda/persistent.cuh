// Persistent LSTM / GRU forward: the whole sequence in one cooperative launch.
//
// Design (after Diamos et al. 2016 and FlashRNN; written from scratch):
//
// * Ownership. Block k owns hidden units j in [k*U, k*U + U) and all the
//   gates of those units (rows g*H + j of W_hh, g < G, the cell's gates). The pointwise cell math of unit j therefore runs in the block that
//   computed its gate pre-activations: no gate values cross blocks, only h.
//   U = ceil(H / #SMs), so the grid has at most one block per SM.
//
// * Where W lives. The block copies its G*U rows of W_hh into shared memory
//   once, before the first step, and reads them from there at every step.
//   This is what bounds H (max_hidden): G*U*H values plus one tile of h
//   must fit in the 227 KB a block may use on an H100.
//
// * One step. Each block stages h_prev (all B rows, or a tile of rows when B
//   is large) from global memory into shared memory, computes
//   hh = W_slice . h_prev, adds xproj[t], applies the cell's forward
//   (cells/*.h), and writes output[t], saved[t], cells[t] and its units of
//   h_next. A warp task is (unit u, group of kBatchGroup
//   rows): the 32 lanes split the reduction over k and a shuffle butterfly
//   sums it, so every lane ends with all G pre-activations of its rows and
//   lanes 0..kBatchGroup-1 each finish one (row, unit) element.
//
// * The barrier. Every block needs the complete h of step t-1 before step t,
//   so steps are separated by cooperative_groups grid.sync(), which needs
//   every block to be resident at once: the host checks occupancy and
//   launches with cudaLaunchCooperativeKernel, which refuses (instead of
//   hanging) when the grid does not fit.
//
// * Why double buffering. h lives in a (2, B, H) global workspace: step s
//   reads buffer (s-1)&1 (h0 at s = 0) and writes buffer s&1. With a single
//   buffer a fast block could overwrite h while a slow block is still reading
//   it, which would need a second barrier per step. With two buffers, the
//   buffer written at step s was last read at step s-1, and the barrier that
//   ends step s-1 orders those reads before these writes.
//
// * Other state. The LSTM cell state of (b, j) is only ever touched by the
//   block owning j, so it needs no barrier: it is kept in c_n (read from c0
//   at the first step). h_prev is read with __ldcg (L2, not the SM's L1),
//   since other SMs wrote it.
//
// Arithmetic is plain T (float or double) with fma, no TF32: the same math as
// the standard kernels up to the summation order of the dot products.
#pragma once

#include <algorithm>
#include <cstdint>

#include "compat.cuh"
#include "fusedrnn/params.h"
#include "fusedrnn/persistent.h"

namespace fusedrnn::cuda::persistent {

constexpr int kThreads = 512;    // per block; 16 warps share the block's tasks
constexpr int kWarp = 32;
constexpr int kBatchGroup = 4;   // rows per warp task: each W value loaded
                                 // from shared memory feeds 4 FMAs

// How the work is cut, chosen on the host (plan_tiling) and passed by value.
struct Tiling {
  int units;       // hidden units per block (U); the last block may own fewer
  int batch_tile;  // rows of h staged in shared memory at once, a multiple of
                   // kBatchGroup
};

__device__ __forceinline__ float fma_t(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double fma_t(double a, double b, double c) { return fma(a, b, c); }

// ------------------------------------------------------------ cell policy
// What to read before the dot product (so its global latency hides behind the
// FMA loop) and how to finish one (row, unit) element once its recurrent
// products hh[g] are known: the cell's forward (cells/*.h).

template <class Cell, typename T>
struct ForwardPolicy {
  using Value = T;
  using Params = Sequence<T>;
  static constexpr int kGates = Cell::kGates;

  struct Input {
    T x[kGates];     // xproj of each gate (its biases in)
    T bias[kGates];  // b_hh of each gate (cells taking it with the product)
    T c_prev;        // cell state before this step (cells with one)
    bool active;
  };

  __device__ static Input load(const Params& p, int64_t t, bool first, int64_t b, int64_t j) {
    const int64_t H = p.hidden;
    Input in;
    in.active = row_active(p.lengths, t, b);
    in.c_prev = T(0);
    if constexpr (Cell::kCellState) in.c_prev = first ? p.c0[b * H + j] : p.c_n[b * H + j];
    const T* x = p.xproj + (t * p.batch + b) * kGates * H;
#pragma unroll
    for (int g = 0; g < kGates; ++g) {
      in.x[g] = in.active ? x[g * H + j] : T(0);
      in.bias[g] = p.b_hh != nullptr ? p.b_hh[g * H + j] : T(0);
    }
    return in;
  }

  // Writes output[t], saved[t], cells[t] and the running c; returns the new h
  // (the carried one for an inactive row).
  __device__ static T finish(const Params& p, const Input& in, const T (&hh)[kGates], T h_prev,
                             int64_t t, int64_t b, int64_t j) {
    constexpr int S = Cell::kSaved;
    const int64_t H = p.hidden;
    const int64_t row = t * p.batch + b;  // row of this step in (T, B, *) buffers
    typename Cell::template Inputs<T> cell_in;
#pragma unroll
    for (int g = 0; g < kGates; ++g) {
      cell_in.x[g] = in.x[g];
      cell_in.hh[g] = p.b_hh != nullptr ? hh[g] + in.bias[g] : hh[g];
    }
    cell_in.h_prev = h_prev;
    cell_in.c_prev = in.c_prev;
    const auto out = in.active ? Cell::forward(cell_in, ElementToolkit<T>{})
                               : Cell::carry(cell_in);
    p.output[row * H + j] = in.active ? out.h : T(0);
    if constexpr (Cell::kCellState) {
      p.c_n[b * H + j] = out.c;
      if (p.cells != nullptr) p.cells[row * H + j] = out.c;
    }
    if (p.saved != nullptr) {
#pragma unroll
      for (int k = 0; k < S; ++k) p.saved[row * S * H + k * H + j] = out.saved[k];
    }
    return out.h;
  }
};

// ------------------------------------------------------------ device pieces

// Copies rows g*H + j0 + u (u < units, g < G) of W_hh into w_s, unit-major:
// w_s[(u*G + g)*H + k], so the G rows of one unit are adjacent.
template <int G, typename T>
__device__ void load_weight_slice(T* w_s, const T* w_hh, int H, int j0, int units) {
  const int n = units * G * H;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int local_row = i / H, k = i % H;
    const int u = local_row / G, g = local_row % G;
    w_s[i] = w_hh[(static_cast<int64_t>(g) * H + j0 + u) * H + k];
  }
}

// Copies `rows` rows of h_prev starting at row b0 into h_s, then zero-fills up
// to `padded_rows` so that a partial batch group computes on zeros.
template <typename T>
__device__ void stage_h(T* h_s, const T* h_prev, int64_t b0, int rows, int padded_rows, int H) {
  const T* src = h_prev + b0 * H;
  const int n = rows * H, n_padded = padded_rows * H;
  for (int i = threadIdx.x; i < n_padded; i += blockDim.x) {
    // __ldcg: h_prev was written by other SMs; read it from L2, never from a
    // possibly stale line in this SM's L1.
    h_s[i] = i < n ? __ldcg(src + i) : T(0);
  }
}

// hh[g][r] = sum_k w_u[g*H + k] * h_g[r*H + k] for G gates of one unit and
// kBatchGroup rows. Lanes take k = lane, lane+32, ... (consecutive addresses:
// no bank conflicts); the butterfly leaves the full sums in every lane.
template <int G, typename T>
__device__ void gate_dot(const T* w_u, const T* h_g, int H, int lane,
                         T (&acc)[G][kBatchGroup]) {
#pragma unroll
  for (int g = 0; g < G; ++g)
#pragma unroll
    for (int r = 0; r < kBatchGroup; ++r) acc[g][r] = T(0);

  for (int k = lane; k < H; k += kWarp) {
    T w[G], h[kBatchGroup];
#pragma unroll
    for (int g = 0; g < G; ++g) w[g] = w_u[g * H + k];
#pragma unroll
    for (int r = 0; r < kBatchGroup; ++r) h[r] = h_g[r * H + k];
#pragma unroll
    for (int g = 0; g < G; ++g)
#pragma unroll
      for (int r = 0; r < kBatchGroup; ++r) acc[g][r] = fma_t(w[g], h[r], acc[g][r]);
  }

#pragma unroll
  for (int g = 0; g < G; ++g)
#pragma unroll
    for (int r = 0; r < kBatchGroup; ++r)
#pragma unroll
      for (int offset = kWarp / 2; offset > 0; offset /= 2)
        acc[g][r] += __shfl_xor_sync(0xffffffffu, acc[g][r], offset);
}

// ------------------------------------------------------------------ kernel

template <typename Policy>
__global__ void __launch_bounds__(kThreads, 1)
    persistent_forward_kernel(const typename Policy::Params p, const Tiling tiling,
                              typename Policy::Value* h_work) {
  using T = typename Policy::Value;
  constexpr int G = Policy::kGates;
  namespace cg = cooperative_groups;

  FUSEDRNN_DYNAMIC_SHARED(unsigned char, smem_raw);
  const int H = static_cast<int>(p.hidden);  // the host checked it is small
  const int64_t B = p.batch;
  T* w_s = reinterpret_cast<T*>(smem_raw);  // (U*G, H) weight slice
  T* h_s = w_s + tiling.units * G * H;      // (batch_tile, H) staged h_prev

  const int j0 = blockIdx.x * tiling.units;
  const int units = min(tiling.units, H - j0);  // >= 1 by the grid size
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int num_warps = blockDim.x / kWarp;

  // Once per sequence. The __syncthreads after the first stage_h makes the
  // slice visible to the whole block before its first use.
  load_weight_slice<G>(w_s, p.w_hh, H, j0, units);

  cg::grid_group grid = cg::this_grid();
  for (int64_t s = 0; s < p.steps; ++s) {
    const int64_t t = p.reverse ? p.steps - 1 - s : s;
    const bool first = s == 0, last = s == p.steps - 1;
    const T* h_prev = first ? p.h0 : h_work + ((s - 1) & 1) * B * H;
    T* h_next = h_work + (s & 1) * B * H;

    for (int64_t b0 = 0; b0 < B; b0 += tiling.batch_tile) {
      const int rows = static_cast<int>(B - b0 < tiling.batch_tile ? B - b0 : tiling.batch_tile);
      const int groups = (rows + kBatchGroup - 1) / kBatchGroup;
      __syncthreads();  // the previous tile's readers of h_s are done
      stage_h(h_s, h_prev, b0, rows, groups * kBatchGroup, H);
      __syncthreads();

      for (int task = warp; task < units * groups; task += num_warps) {
        const int u = task % units, group = task / units;
        const int r = group * kBatchGroup + lane;  // this lane's row in the tile
        const bool owner = lane < kBatchGroup && r < rows;
        const int64_t b = b0 + r, j = j0 + u;

        typename Policy::Input in{};
        if (owner) in = Policy::load(p, t, first, b, j);

        T acc[G][kBatchGroup];
        gate_dot<G>(w_s + u * G * H, h_s + group * kBatchGroup * H, H, lane, acc);

        // Every lane holds all sums; lane l (< kBatchGroup) keeps column l.
        // Unrolled selects rather than acc[g][lane], so acc stays in registers.
        T hh[G];
#pragma unroll
        for (int g = 0; g < G; ++g) hh[g] = acc[g][0];
#pragma unroll
        for (int rr = 1; rr < kBatchGroup; ++rr)
          if (lane == rr)
#pragma unroll
            for (int g = 0; g < G; ++g) hh[g] = acc[g][rr];

        if (owner) {
          const T h = Policy::finish(p, in, hh, h_s[r * H + j], t, b, j);
          h_next[b * H + j] = h;
          if (last) p.h_n[b * H + j] = h;
        }
      }
    }
    // Every block must see the whole h_next before the next step stages it.
    if (!last) grid.sync();
  }
}

// -------------------------------------------------------------------- host

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Cuts H over at most `sm_count` blocks (fewer under a max_blocks override)
// and sizes the tile of staged rows (h forward, `staged_width` = G*H gate
// gradients backward) to the shared memory left after the weight slice (or
// to an overridden tile, where it fits). Returns false when even one group of
// rows does not fit next to the slice.
inline bool plan_tiling(int64_t hidden, int64_t batch, int gates, int64_t elem_bytes,
                        int64_t sm_count, int64_t smem_per_block, const TilingOverride& knobs,
                        Tiling* tiling, int64_t* smem_bytes, int64_t staged_width = 0) {
  if (hidden <= 0 || batch <= 0 || sm_count <= 0) return false;
  const int64_t row_bytes = hidden * elem_bytes;
  const int64_t staged_bytes = (staged_width > 0 ? staged_width : hidden) * elem_bytes;
  if (staged_bytes > smem_per_block) return false;  // also keeps the products below small
  const int64_t max_blocks =
      knobs.max_blocks > 0 ? std::min(sm_count, knobs.max_blocks) : sm_count;
  const int64_t units = ceil_div(hidden, max_blocks);
  const int64_t w_bytes = gates * units * row_bytes;
  if (w_bytes + kBatchGroup * staged_bytes > smem_per_block) return false;

  // Largest tile that fits, then spread the rows evenly over the tiles so a
  // batch slightly above the maximum does not leave a tiny last tile.
  const int64_t max_tile =
      (smem_per_block - w_bytes) / staged_bytes / kBatchGroup * kBatchGroup;
  const int64_t tiles = ceil_div(batch, max_tile);
  const int64_t even_tile = ceil_div(ceil_div(batch, tiles), kBatchGroup) * kBatchGroup;
  const int64_t tile = knobs.batch_tile > 0 ? std::min(knobs.batch_tile, max_tile) : even_tile;

  tiling->units = static_cast<int>(units);
  tiling->batch_tile = static_cast<int>(tile);
  *smem_bytes = w_bytes + tile * staged_bytes;
  return true;
}

// The grid of one persistent launch, when it fits.
struct LaunchPlan {
  Tiling tiling;
  int64_t smem_bytes = 0;
  unsigned blocks = 0;
};

// Plans a launch of `kernel` over `hidden` units (staged rows `staged_width`
// wide, 0: H) and prepares its shared memory; false when the device has no
// cooperative launch, the plan does not fit on chip or the grid cannot be
// co-resident.
template <typename Kernel>
bool plan_launch(Kernel kernel, int64_t hidden, int64_t batch, int gates, int64_t elem_bytes,
                 int64_t staged_width, LaunchPlan* plan) {
  const compat::DeviceInfo device = compat::current_device();  // cached by ATen on CUDA
  if (!device.cooperative_launch) return false;
  if (!plan_tiling(hidden, batch, gates, elem_bytes, device.sm_count,
                   device.shared_per_block_optin, tiling_override(), &plan->tiling,
                   &plan->smem_bytes, staged_width))
    return false;
  if (plan->smem_bytes > compat::kDefaultSharedBytes)
    compat::set_max_dynamic_shared(kernel, plan->smem_bytes);
  const int blocks_per_sm = compat::max_active_blocks_per_sm(kernel, kThreads, plan->smem_bytes);
  const int64_t blocks = ceil_div(hidden, plan->tiling.units);
  if (blocks_per_sm < 1 || blocks > int64_t{blocks_per_sm} * device.sm_count) return false;
  plan->blocks = static_cast<unsigned>(blocks);
  return true;
}

// Launches persistent_forward_kernel<Policy> if it fits; see persistent.h.
template <typename Policy>
bool launch_persistent(const typename Policy::Params& params) {
  using T = typename Policy::Value;
  if (params.steps <= 0 || params.batch <= 0 || params.hidden <= 0) return false;
  auto kernel = persistent_forward_kernel<Policy>;
  LaunchPlan plan;
  if (!plan_launch(kernel, params.hidden, params.batch, Policy::kGates, sizeof(T), 0, &plan))
    return false;
  // Double-buffered h (see the top of this file), freed when this returns.
  compat::Workspace work(2 * params.batch * params.hidden * static_cast<int64_t>(sizeof(T)));
  return compat::launch_cooperative(kernel, plan.blocks, kThreads, plan.smem_bytes,
                                    compat::current_stream(), params, plan.tiling,
                                    static_cast<T*>(work.get()));
}

}  // namespace fusedrnn::cuda::persistent
