// Persistent LSTM / GRU backward: the whole backward-through-time recurrence
// in one cooperative launch, the mirror of persistent.cuh's forward.
//
// * Ownership. Block k owns hidden units j in [k*U, k*U + U), as in the
//   forward. At each step (latest first) it forms, for its units, the
//   gradient reaching h_t:
//     dh = (later step's gate gradients) @ W_hh[:, j]   what the recurrence sends back
//        + carry                                          what passed straight through
//        + grad_output[t]                                 where the row is active
//   then runs the cell's backward (cells/*.h) for its units and writes their
//   gate gradients. The carry (the cell's dh_prev where active, dh where
//   inactive) and the LSTM's dc live in the dh and dc buffers, each (b, j)
//   touched by its owning block only.
//
// * Where W lives. The block holds the columns j of W_hh for all G*H gate
//   rows, (U, G*H) in shared memory: as many values as the forward's slice.
//
// * One step. The block stages the later step's gate gradients of a batch
//   tile (all G*H of each row: every block wrote some; for the GRU its r and
//   z parts are d_xproj's, only the n part is d_hh's) into shared memory and
//   dots them with its columns; the same warp tasks and butterfly as the
//   forward (gate_dot with one "gate" of length G*H). One grid.sync per step
//   publishes this step's gate gradients; a last pass after the last step
//   forms the gradient reaching h0. Each step writes its own slice of the
//   (T, B, G*H) gradients, so no buffer is reused across a barrier.
//
// The input and weight gradients stay single GEMMs over all steps, run by
// the layer driver (csrc/layer/backward.cpp) on the gate gradients this kernel leaves.
#pragma once

#include "persistent.cuh"

namespace fusedrnn::cuda::persistent {

// ------------------------------------------------------------ cell policy
// Stages the gradients W_hh multiplies (G*H per row) of a tile of rows at
// step t, and finishes one (row, unit) element given the gradient reaching
// its hidden state: the cell's backward (cells/*.h) writes its gradients and
// returns the carry.

template <class Cell, typename T>
struct BackwardPolicy {
  using Value = T;
  using Params = BackwardSequence<T>;
  static constexpr int kGates = Cell::kGates;
  static constexpr int kShared = Cell::kSharedGradGates;  // d(hh) = d(x) for these gates

  // The recurrent product's gradient: the shared gates' from d_xproj, the
  // others' from d_hh. Written by other SMs: read from L2 (__ldcg).
  __device__ static void stage(T* d_s, const Params& p, int64_t t, int64_t b0, int rows,
                               int padded_rows) {
    const int H = static_cast<int>(p.hidden), GH = kGates * H, RH = (kGates - kShared) * H;
    const T* d_x = p.d_xproj + (t * p.batch + b0) * GH;
    const T* d_rest = kShared < kGates ? p.d_hh + (t * p.batch + b0) * RH : nullptr;
    for (int i = threadIdx.x; i < padded_rows * GH; i += blockDim.x) {
      const int r = i / GH, k = i % GH;
      if (r >= rows)
        d_s[i] = T(0);
      else
        d_s[i] = k < kShared * H ? __ldcg(d_x + r * GH + k) : __ldcg(d_rest + r * RH + k - kShared * H);
    }
  }

  __device__ static T finish(const Params& p, int64_t t, int64_t b, int64_t j, T dh) {
    const int64_t H = p.hidden, row = t * p.batch + b;
    T* d_x = p.d_xproj + row * kGates * H + j;
    T* d_rest = kShared < kGates ? p.d_hh + row * (kGates - kShared) * H + j : nullptr;
    if (!row_active(p.lengths, t, b)) {  // dh (and dc) pass straight through
#pragma unroll
      for (int g = 0; g < kGates; ++g) d_x[g * H] = T(0);
#pragma unroll
      for (int g = kShared; g < kGates; ++g) d_rest[(g - kShared) * H] = T(0);
      return dh;
    }
    // The state before step t: the initial one at a sequence's first step (a
    // reversed one starts at its own last step), else the one after the step before.
    const int64_t length = p.lengths != nullptr ? p.lengths[b] : p.steps;
    const bool first = p.reverse ? t + 1 >= length : t == 0;
    const int64_t prev_row = p.reverse ? row + p.batch : row - p.batch;
    typename Cell::template GradInputs<T> in;
#pragma unroll
    for (int k = 0; k < Cell::kSaved; ++k) in.saved[k] = p.saved[row * Cell::kSaved * H + k * H + j];
    if constexpr (Cell::kCellState) {
      in.c = p.cells[row * H + j];
      in.c_prev = first ? p.c0[b * H + j] : p.cells[prev_row * H + j];
      in.dc = p.dc[b * H + j];
    }
    if constexpr (Cell::kReadsHPrev)
      in.h_prev = first ? p.h0[b * H + j] : p.output[prev_row * H + j];
    in.dh = dh;
    const auto d = Cell::backward(in, ElementToolkit<T>{});
#pragma unroll
    for (int g = 0; g < kGates; ++g) d_x[g * H] = d.d_x[g];
#pragma unroll
    for (int g = kShared; g < kGates; ++g) d_rest[(g - kShared) * H] = d.d_hh[g];
    if constexpr (Cell::kCellState) p.dc[b * H + j] = d.dc_prev;
    return d.dh_prev;
  }
};

// ------------------------------------------------------------ device pieces

// Copies columns j0 + u (u < units) of W_hh (rows x H) into w_s, unit-major:
// w_s[u * rows + n] = W_hh[n][j0 + u], so one unit's column is contiguous.
template <typename T>
__device__ void load_weight_columns(T* w_s, const T* w_hh, int rows, int H, int j0, int units) {
  const int n = units * rows;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int u = i / rows, row = i % rows;
    w_s[i] = w_hh[static_cast<int64_t>(row) * H + j0 + u];
  }
}

// ------------------------------------------------------------------ kernel

template <typename Policy>
__global__ void __launch_bounds__(kThreads, 1)
    persistent_backward_kernel(const typename Policy::Params p, const Tiling tiling) {
  using T = typename Policy::Value;
  namespace cg = cooperative_groups;

  FUSEDRNN_DYNAMIC_SHARED(unsigned char, smem_raw);
  const int H = static_cast<int>(p.hidden);  // the host checked it is small
  const int GH = Policy::kGates * H;
  const int64_t B = p.batch;
  T* w_s = reinterpret_cast<T*>(smem_raw);  // (U, G*H) columns of W_hh
  T* d_s = w_s + tiling.units * GH;         // (batch_tile, G*H) staged gradients

  const int j0 = blockIdx.x * tiling.units;
  const int units = min(tiling.units, H - j0);  // >= 1 by the grid size
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int num_warps = blockDim.x / kWarp;

  // Once per sequence; first read after the __syncthreads that follows the
  // first staging.
  load_weight_columns(w_s, p.w_hh, GH, H, j0, units);

  cg::grid_group grid = cg::this_grid();
  for (int64_t s = 0; s <= p.steps; ++s) {
    // Pass s runs step t (latest first); pass `steps` only forms dh of h0.
    const bool done = s == p.steps;
    const int64_t t = p.reverse ? s : p.steps - 1 - s;
    const int64_t t_later = p.reverse ? s - 1 : p.steps - s;
    const bool later = s > 0;  // a later step's gradients to send back

    for (int64_t b0 = 0; b0 < B; b0 += tiling.batch_tile) {
      const int rows = static_cast<int>(B - b0 < tiling.batch_tile ? B - b0 : tiling.batch_tile);
      const int groups = (rows + kBatchGroup - 1) / kBatchGroup;
      if (later) {
        __syncthreads();  // the previous tile's readers of d_s are done
        Policy::stage(d_s, p, t_later, b0, rows, groups * kBatchGroup);
        __syncthreads();
      }

      for (int task = warp; task < units * groups; task += num_warps) {
        const int u = task % units, group = task / units;
        const int r = group * kBatchGroup + lane;
        const bool owner = lane < kBatchGroup && r < rows;
        const int64_t b = b0 + r, j = j0 + u;

        T acc[1][kBatchGroup] = {};
        if (later) gate_dot<1>(w_s + u * GH, d_s + group * kBatchGroup * GH, GH, lane, acc);
        T rec = acc[0][0];  // lane l (< kBatchGroup) keeps column l, as in the forward
#pragma unroll
        for (int rr = 1; rr < kBatchGroup; ++rr)
          if (lane == rr) rec = acc[0][rr];

        if (owner) {
          T dh = rec + p.dh[b * H + j];
          if (!done) {
            if (row_active(p.lengths, t, b)) dh += p.grad_out[(t * B + b) * H + j];
            dh = Policy::finish(p, t, b, j, dh);
          }
          p.dh[b * H + j] = dh;  // the carry; after the last pass, dh of h0
        }
      }
    }
    // Every block must see this step's gate gradients before the next pass.
    if (!done) grid.sync();
  }
}

// Launches persistent_backward_kernel<Policy> if it fits; see persistent.h.
template <typename Policy>
bool launch_persistent_backward(const typename Policy::Params& params) {
  using T = typename Policy::Value;
  if (params.steps <= 0 || params.batch <= 0 || params.hidden <= 0) return false;
  auto kernel = persistent_backward_kernel<Policy>;
  LaunchPlan plan;
  if (!plan_launch(kernel, params.hidden, params.batch, Policy::kGates, sizeof(T),
                   Policy::kGates * params.hidden, &plan))
    return false;
  return compat::launch_cooperative(kernel, plan.blocks, kThreads, plan.smem_bytes,
                                    compat::current_stream(), params, plan.tiling);
}

// The definitions behind persistent.h's declarations; persistent_<dtype>.cu
// instantiate them.
template <class Cell, typename T>
bool forward(const Sequence<T>& p) {
  return launch_persistent<ForwardPolicy<Cell, T>>(p);
}

template <class Cell, typename T>
bool backward(const BackwardSequence<T>& p) {
  return launch_persistent_backward<BackwardPolicy<Cell, T>>(p);
}

}  // namespace fusedrnn::cuda::persistent
