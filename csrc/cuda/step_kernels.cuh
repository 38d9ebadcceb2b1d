// CUDA versions of the per-step pointwise kernels declared in step_kernels.h.
//
// One small kernel per job. Each thread owns element (b, j) of a (B, W)
// buffer and walks the batch with a grid-stride loop; the gate arithmetic is
// the cells.h code the CPU path runs, so the CPU tests cover it.
//
// Launches go on the current stream with no allocation, no host
// synchronisation and no atomics, so a step is deterministic and can be
// captured into a CUDA graph. The params structs are plain sizes and
// pointers: they are passed to the kernels by value.
//
// Included only by step_kernels_{float,double}.cu, each of which explicitly
// instantiates step_kernels<T>() for its dtype.
#pragma once

#include <algorithm>
#include <cstdint>

#include "compat.cuh"
#include "fusedrnn/cells.h"
#include "fusedrnn/norm_rows.h"
#include "fusedrnn/params.h"
#include "fusedrnn/step_kernels.h"

namespace fusedrnn {
namespace cuda {
namespace step {

constexpr int kThreads = 256;
// The grid-stride loops cover anything past this many blocks; 65535 blocks of
// 256 threads is many full waves on any GPU.
constexpr int64_t kMaxBlocks = 65535;

inline unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::min((n + kThreads - 1) / kThreads, kMaxBlocks));
}

// 64-bit grid-stride loop bounds: B * 4H can pass 2^31 on large batches.
__device__ __forceinline__ int64_t first_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// Saves the four gate values of one element (H apart); gates == nullptr
// means inference, where nothing is saved.
template <typename T>
__device__ __forceinline__ void save_gates(T* gates, int64_t g0, int64_t H, T a, T b, T c, T d) {
  if (gates == nullptr) return;
  gates[g0] = a;
  gates[g0 + H] = b;
  gates[g0 + 2 * H] = c;
  gates[g0 + 3 * H] = d;
}

// v rounded to nearest in `type` (bf16 or fp16), as the bits of a 16-bit GEMM
// operand: the step kernels write the next GEMM's operand in the layer's own
// 16-bit type, so the GEMM runs on the tensor cores with no conversion launch.
__device__ __forceinline__ std::uint16_t half_bits(float v, HalfType type) {
  return type == HalfType::bf16 ? __bfloat16_as_ushort(__float2bfloat16_rn(v))
                                : __half_as_ushort(__float2half_rn(v));
}

template <typename T>
__device__ __forceinline__ void store_half(std::uint16_t* out, int64_t i, T v, HalfType type) {
  if (out != nullptr) out[i] = half_bits(static_cast<float>(v), type);
}

// ---------------------------------------------------------------- LSTM

template <typename T>
__global__ void lstm_forward_kernel(const LstmForwardStep<T> p) {
  const int64_t H = p.hidden, n = p.batch * H;
  for (int64_t idx = first_index(); idx < n; idx += grid_stride()) {
    const int64_t b = idx / H, j = idx - b * H;
    const int64_t g0 = b * 4 * H + j;  // gate i of this element; f, g, o follow H apart
    if (row_active(p.lengths, p.t, b)) {
      const T c_prev = p.c[idx];
      const LstmGatesAndState<T> s = lstm_cell_forward<T>(
          p.xproj[g0] + p.hh[g0], p.xproj[g0 + H] + p.hh[g0 + H],
          p.xproj[g0 + 2 * H] + p.hh[g0 + 2 * H], p.xproj[g0 + 3 * H] + p.hh[g0 + 3 * H],
          c_prev, Clip<T>::make(p.cell_clip));
      save_gates(p.gates, g0, H, s.i, s.f, s.g, s.o);
      // Toolkit: zoneout mixes in the previous state; h_masked feeds the next product.
      const T c_new = p.zone_c != nullptr ? zoneout_mix(p.zone_c[idx], c_prev, s.c) : s.c;
      const T h_new = p.zone_h != nullptr ? zoneout_mix(p.zone_h[idx], p.h_state[idx], s.h) : s.h;
      p.c[idx] = c_new;
      if (p.cells != nullptr) p.cells[idx] = c_new;
      p.h_out[idx] = h_new;
      if (p.h_state != nullptr) p.h_state[idx] = h_new;
      if (p.rec_mask != nullptr) p.h_masked[idx] = h_new * p.rec_mask[idx];
      store_half(p.h_half, idx, h_new, p.half_type);  // inactive rows keep theirs
    } else {
      // Finished sequence: state carried, zero output and zero saved gates.
      save_gates(p.gates, g0, H, T(0), T(0), T(0), T(0));
      if (p.cells != nullptr) p.cells[idx] = p.c[idx];
      p.h_out[idx] = T(0);
    }
  }
}

// The four gate gradients of one element (H apart), and their 16-bit copy.
template <typename T>
__device__ __forceinline__ void store_gate_grads(const LstmBackwardStep<T>& p, int64_t g0,
                                                 int64_t H, T di, T df, T dg, T d_o) {
  const T d[4] = {di, df, dg, d_o};
  for (int g = 0; g < 4; ++g) {
    p.d_gates[g0 + g * H] = d[g];
    store_half(p.d_gates_half, g0 + g * H, d[g], p.half_type);
  }
}

template <typename T>
__global__ void lstm_backward_kernel(const LstmBackwardStep<T> p) {
  const int64_t H = p.hidden, n = p.batch * H;
  for (int64_t idx = first_index(); idx < n; idx += grid_stride()) {
    const int64_t b = idx / H, j = idx - b * H;
    const int64_t g0 = b * 4 * H + j;
    const Clip<T> grad_clip = Clip<T>::make(p.grad_clip);
    if (row_active(p.lengths, p.t, b)) {
      const Clip<T> cell_clip = Clip<T>::make(p.cell_clip);
      const T i = p.gates[g0], f = p.gates[g0 + H], g = p.gates[g0 + 2 * H];
      const T c_prev = p.c_prev[idx], dh = p.dh[idx], dc = p.dc[idx];
      // Zoneout: the cell's own h~, c~ get (1 - d) of the gradient, and c~ is
      // recomputed (the saved cell is the mixed state).
      const T d_h = p.zone_h != nullptr ? p.zone_h[idx] : T(0);
      const T d_c = p.zone_c != nullptr ? p.zone_c[idx] : T(0);
      const T c_new = p.zone_c != nullptr ? lstm_new_cell(i, f, g, c_prev, cell_clip) : p.cells[idx];
      const LstmGrads<T> d = lstm_cell_backward<T>(
          i, f, g, p.gates[g0 + 3 * H], c_new, c_prev, (T(1) - d_h) * dh, (T(1) - d_c) * dc,
          cell_clip);
      store_gate_grads(p, g0, H, d.d_i, d.d_f, d.d_g, d.d_o);
      p.dc[idx] = grad_clip(p.zone_c != nullptr ? d.d_c_prev + d_c * dc : d.d_c_prev);
    } else {
      // dc passes straight through (clamped by grad_clip); zero d_gates keep
      // dh_state += dG @ W a no-op.
      store_gate_grads(p, g0, H, T(0), T(0), T(0), T(0));
      if (grad_clip.on) p.dc[idx] = grad_clip(p.dc[idx]);
    }
  }
}

// ------------------------------------------- fused backward steps
// One launch per backward step instead of three (GradFlow in params.h): the
// gradient reaching h, the cell's backward and what passes on to the earlier
// step, for layers without projection.

template <typename Step, typename T>
struct FusedBackward {
  Step step;
  GradFlow<T> flow;
};

// The gradient reaching h at this step.
template <typename T>
__device__ __forceinline__ T gradient_at_step(const GradFlow<T>& f, int64_t idx, bool active) {
  return f.dh_carry[idx] + f.dh_gemm[idx] + (active ? f.grad_out[idx] : T(0));
}

template <typename T>
__global__ void lstm_backward_fused_kernel(const FusedBackward<LstmBackwardStep<T>, T> k) {
  const LstmBackwardStep<T>& p = k.step;
  const int64_t H = p.hidden, n = p.batch * H;
  for (int64_t idx = first_index(); idx < n; idx += grid_stride()) {
    const int64_t b = idx / H, j = idx - b * H;
    const int64_t g0 = b * 4 * H + j;
    const bool active = row_active(p.lengths, p.t, b);
    const T dh = gradient_at_step(k.flow, idx, active);
    if (active) {
      const LstmGrads<T> d = lstm_cell_backward<T>(
          p.gates[g0], p.gates[g0 + H], p.gates[g0 + 2 * H], p.gates[g0 + 3 * H], p.cells[idx],
          p.c_prev[idx], dh, p.dc[idx]);
      store_gate_grads(p, g0, H, d.d_i, d.d_f, d.d_g, d.d_o);
      p.dc[idx] = d.d_c_prev;
      k.flow.dh_carry[idx] = T(0);  // all of dh went into d_gates
    } else {
      // h, c and their gradients pass straight through; zero d_gates make
      // this row of the step's GEMM zero.
      store_gate_grads(p, g0, H, T(0), T(0), T(0), T(0));
      k.flow.dh_carry[idx] = dh;
    }
  }
}

// ------------------------------------------- projection and dh bookkeeping

template <typename T>
__global__ void projected_commit_kernel(const ProjectedCommit<T> p) {
  const int64_t W = p.h_size, n = p.batch * W;
  for (int64_t idx = first_index(); idx < n; idx += grid_stride()) {
    if (row_active(p.lengths, p.t, idx / W)) {
      const T h = p.h_new[idx];
      p.out[idx] = h;
      p.h_state[idx] = h;
      if (p.rec_mask != nullptr) p.h_masked[idx] = h * p.rec_mask[idx];
    } else {
      p.out[idx] = T(0);  // h_state keeps the last active value
    }
  }
}

template <typename T>
__global__ void grad_h_accumulate_kernel(const GradHStep<T> p) {
  const int64_t W = p.h_size, n = p.batch * W;
  for (int64_t idx = first_index(); idx < n; idx += grid_stride()) {
    // An inactive step's output is a constant zero: its gradient goes nowhere.
    const T g = row_active(p.lengths, p.t, idx / W) ? p.grad_out[idx] : T(0);
    p.dh_total[idx] = p.dh_state[idx] + g;
  }
}

template <typename T>
__global__ void grad_h_carry_kernel(const GradHStep<T> p) {
  const int64_t W = p.h_size, n = p.batch * W;
  for (int64_t idx = first_index(); idx < n; idx += grid_stride()) {
    // Active rows restart from zero (zoneout: from d * dh, h_{t-1}'s direct
    // share) before the caller adds dG @ W_hh; inactive rows carry the
    // gradient to the earlier step unchanged.
    const T direct = p.zone != nullptr ? p.zone[idx] * p.dh_total[idx] : T(0);
    p.dh_state[idx] = row_active(p.lengths, p.t, idx / W) ? direct : p.dh_total[idx];
  }
}

template <typename T>
__global__ void grad_h_combine_kernel(const GradHCombine<T> p) {
  const int64_t n = p.batch * p.h_size;
  const Clip<T> clip = Clip<T>::make(p.grad_clip);
  for (int64_t idx = first_index(); idx < n; idx += grid_stride()) {
    // The recurrent product took the masked h_{t-1}: its gradient is masked too.
    const T through_w = p.rec_mask != nullptr ? p.rec[idx] * p.rec_mask[idx] : p.rec[idx];
    p.dh_state[idx] = clip(p.dh_state[idx] + through_w);
  }
}

// ----------------------------------------------------------------- GRU

template <typename T>
__global__ void gru_forward_kernel(const GruForwardStep<T> p) {
  const int64_t H = p.hidden, n = p.batch * H;
  for (int64_t idx = first_index(); idx < n; idx += grid_stride()) {
    const int64_t b = idx / H, j = idx - b * H;
    const int64_t x0 = b * 3 * H + j;  // r column of xproj / hh; z, n follow H apart
    const int64_t g0 = b * 4 * H + j;  // r column of gates; z, n, hh_n follow
    if (row_active(p.lengths, p.t, b)) {
      T hh[3] = {p.hh[x0], p.hh[x0 + H], p.hh[x0 + 2 * H]};
      if (p.b_hh != nullptr)
        for (int g = 0; g < 3; ++g) hh[g] += p.b_hh[g * H + j];
      const T h_prev = p.h_state[idx];
      const GruGatesAndState<T> s = gru_cell_forward<T>(p.xproj[x0], p.xproj[x0 + H], p.xproj[x0 + 2 * H],
                                                hh[0], hh[1], hh[2], h_prev);
      save_gates(p.gates, g0, H, s.r, s.z, s.n, hh[2]);  // dr needs W_hn h + b_hn
      const T h_new = p.zone_h != nullptr ? zoneout_mix(p.zone_h[idx], h_prev, s.h) : s.h;
      p.h_state[idx] = h_new;
      p.h_out[idx] = h_new;
      if (p.rec_mask != nullptr) p.h_masked[idx] = h_new * p.rec_mask[idx];
      store_half(p.h_half, idx, h_new, p.half_type);  // inactive rows keep theirs
    } else {
      save_gates(p.gates, g0, H, T(0), T(0), T(0), T(0));
      p.h_out[idx] = T(0);  // h_state carried
    }
  }
}

// The gradients of one element's input projection (r, z, n) and recurrent
// product (r, z, and dh_n for n), and their 16-bit copies.
template <typename T>
__device__ __forceinline__ void store_gru_grads(const GruBackwardStep<T>& p, int64_t x0, int64_t H,
                                                T dr, T dz, T dn, T dh_n) {
  const T dx[3] = {dr, dz, dn}, dhh[3] = {dr, dz, dh_n};
  for (int g = 0; g < 3; ++g) {
    p.d_xproj[x0 + g * H] = dx[g];
    p.d_hh[x0 + g * H] = dhh[g];
    store_half(p.d_xproj_half, x0 + g * H, dx[g], p.half_type);
    store_half(p.d_hh_half, x0 + g * H, dhh[g], p.half_type);
  }
}

template <typename T>
__global__ void gru_backward_kernel(const GruBackwardStep<T> p) {
  const int64_t H = p.hidden, n = p.batch * H;
  for (int64_t idx = first_index(); idx < n; idx += grid_stride()) {
    const int64_t b = idx / H, j = idx - b * H;
    const int64_t x0 = b * 3 * H + j;
    const int64_t g0 = b * 4 * H + j;
    const T dh = p.dh[idx];  // read before dh_state is written: they may alias
    if (row_active(p.lengths, p.t, b)) {
      // Zoneout: the cell's h~ gets (1 - d) of the gradient, h_{t-1} d of it directly.
      const T d_h = p.zone_h != nullptr ? p.zone_h[idx] : T(0);
      const GruGrads<T> d = gru_cell_backward<T>(p.gates[g0], p.gates[g0 + H], p.gates[g0 + 2 * H],
                                                 p.gates[g0 + 3 * H], p.h_prev[idx],
                                                 (T(1) - d_h) * dh);
      // r and z enter as x + hh, so both products get the same gradient; the
      // n gate's recurrent product sits inside r * (.), hence dh_n.
      store_gru_grads(p, x0, H, d.dx_r, d.dx_z, d.dx_n, d.dh_n);
      p.dh_state[idx] = p.zone_h != nullptr ? d.dh_prev + d_h * dh : d.dh_prev;
    } else {
      store_gru_grads(p, x0, H, T(0), T(0), T(0), T(0));
      p.dh_state[idx] = dh;  // passes straight through
    }
  }
}

template <typename T>
__global__ void gru_backward_fused_kernel(const FusedBackward<GruBackwardStep<T>, T> k) {
  const GruBackwardStep<T>& p = k.step;
  const int64_t H = p.hidden, n = p.batch * H;
  for (int64_t idx = first_index(); idx < n; idx += grid_stride()) {
    const int64_t b = idx / H, j = idx - b * H;
    const int64_t x0 = b * 3 * H + j;
    const int64_t g0 = b * 4 * H + j;
    const bool active = row_active(p.lengths, p.t, b);
    const T dh = gradient_at_step(k.flow, idx, active);
    if (active) {
      const GruGrads<T> d = gru_cell_backward<T>(p.gates[g0], p.gates[g0 + H], p.gates[g0 + 2 * H],
                                                 p.gates[g0 + 3 * H], p.h_prev[idx], dh);
      // r and z enter as x + hh, so both products get the same gradient; the
      // n gate's recurrent product sits inside r * (.), hence dh_n.
      store_gru_grads(p, x0, H, d.dx_r, d.dx_z, d.dx_n, d.dh_n);
      k.flow.dh_carry[idx] = d.dh_prev;  // z * dh; the GEMM adds the rest
    } else {
      store_gru_grads(p, x0, H, T(0), T(0), T(0), T(0));
      k.flow.dh_carry[idx] = dh;  // passes straight through
    }
  }
}

// -------------------------------------------------------- layer norm
// One block per batch row (norm_rows.h): the block's threads share the row
// out and combine their partial sums in shared memory, in a fixed order (the
// same sums on every run).

template <typename T>
struct BlockRow {
  T* scratch;  // blockDim.x values of dynamic shared memory
  __device__ int64_t first() const { return threadIdx.x; }
  __device__ int64_t stride() const { return blockDim.x; }
  __device__ void sync() const { __syncthreads(); }
  template <typename V>
  __device__ V sum(V partial) const {  // blockDim.x a power of two
    scratch[threadIdx.x] = partial;
    __syncthreads();
    for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
      if (threadIdx.x < half) scratch[threadIdx.x] += scratch[threadIdx.x + half];
      __syncthreads();
    }
    const V total = scratch[0];
    __syncthreads();  // read by all before the next sum overwrites it
    return total;
  }
};

template <typename T>
__device__ __forceinline__ BlockRow<T> block_row() {
  FUSEDRNN_DYNAMIC_SHARED(unsigned char, shared_bytes);
  return {reinterpret_cast<T*>(shared_bytes)};
}

template <typename T>
__global__ void lstm_norm_forward_kernel(const LstmNormForwardStep<T> p) {
  const BlockRow<T> row = block_row<T>();
  for (int64_t b = blockIdx.x; b < p.batch; b += gridDim.x) lstm_norm_forward_row(row, p, b);
}

template <typename T>
__global__ void lstm_norm_backward_kernel(const LstmNormBackwardStep<T> p) {
  const BlockRow<T> row = block_row<T>();
  for (int64_t b = blockIdx.x; b < p.batch; b += gridDim.x) lstm_norm_backward_row(row, p, b);
}

template <typename T>
__global__ void gru_norm_forward_kernel(const GruNormForwardStep<T> p) {
  const BlockRow<T> row = block_row<T>();
  for (int64_t b = blockIdx.x; b < p.batch; b += gridDim.x) gru_norm_forward_row(row, p, b);
}

template <typename T>
__global__ void gru_norm_backward_kernel(const GruNormBackwardStep<T> p) {
  const BlockRow<T> row = block_row<T>();
  for (int64_t b = blockIdx.x; b < p.batch; b += gridDim.x) gru_norm_backward_row(row, p, b);
}

// ------------------------------------------------------ host launchers

// Launches `kernel` over n elements on the current stream; n == 0 (batch 0)
// is a no-op rather than an invalid zero-block launch.
template <typename Params>
void launch(void (*kernel)(const Params), const Params& p, int64_t n) {
  if (n <= 0) return;
  FUSEDRNN_LAUNCH(kernel, blocks_for(n), kThreads, 0, compat::current_stream())(p);
  compat::check_launch();
}

// A row kernel (above): one block of kThreads per batch row, up to kMaxBlocks.
template <typename T, typename Params>
void launch_rows(void (*kernel)(const Params), const Params& p) {
  if (p.batch <= 0 || p.hidden <= 0) return;
  const auto blocks = static_cast<unsigned>(std::min(p.batch, kMaxBlocks));
  FUSEDRNN_LAUNCH(kernel, blocks, kThreads, kThreads * sizeof(T), compat::current_stream())(p);
  compat::check_launch();
}

template <typename T>
void lstm_forward(const LstmForwardStep<T>& p) {
  launch(lstm_forward_kernel<T>, p, p.batch * p.hidden);
}

template <typename T>
void lstm_backward(const LstmBackwardStep<T>& p) {
  launch(lstm_backward_kernel<T>, p, p.batch * p.hidden);
}

template <typename T>
void projected_commit(const ProjectedCommit<T>& p) {
  launch(projected_commit_kernel<T>, p, p.batch * p.h_size);
}

template <typename T>
void grad_h_accumulate(const GradHStep<T>& p) {
  launch(grad_h_accumulate_kernel<T>, p, p.batch * p.h_size);
}

template <typename T>
void grad_h_carry(const GradHStep<T>& p) {
  launch(grad_h_carry_kernel<T>, p, p.batch * p.h_size);
}

template <typename T>
void gru_forward(const GruForwardStep<T>& p) {
  launch(gru_forward_kernel<T>, p, p.batch * p.hidden);
}

template <typename T>
void lstm_backward_fused(const LstmBackwardStep<T>& p, const GradFlow<T>& flow) {
  launch(lstm_backward_fused_kernel<T>, FusedBackward<LstmBackwardStep<T>, T>{p, flow},
         p.batch * p.hidden);
}

template <typename T>
void gru_backward_fused(const GruBackwardStep<T>& p, const GradFlow<T>& flow) {
  launch(gru_backward_fused_kernel<T>, FusedBackward<GruBackwardStep<T>, T>{p, flow},
         p.batch * p.hidden);
}

template <typename T>
void gru_backward(const GruBackwardStep<T>& p) {
  launch(gru_backward_kernel<T>, p, p.batch * p.hidden);
}

template <typename T>
void grad_h_combine(const GradHCombine<T>& p) {
  launch(grad_h_combine_kernel<T>, p, p.batch * p.h_size);
}

template <typename T>
void lstm_norm_forward(const LstmNormForwardStep<T>& p) {
  launch_rows<T>(lstm_norm_forward_kernel<T>, p);
}

template <typename T>
void lstm_norm_backward(const LstmNormBackwardStep<T>& p) {
  launch_rows<T>(lstm_norm_backward_kernel<T>, p);
}

template <typename T>
void gru_norm_forward(const GruNormForwardStep<T>& p) {
  launch_rows<T>(gru_norm_forward_kernel<T>, p);
}

template <typename T>
void gru_norm_backward(const GruNormBackwardStep<T>& p) {
  launch_rows<T>(gru_norm_backward_kernel<T>, p);
}

}  // namespace step

// The definition behind the declaration in step_kernels.h; each
// step_kernels_<dtype>.cu explicitly instantiates it for one T.
template <typename T>
StepKernels<T> step_kernels() {
  StepKernels<T> k;
  k.lstm_forward = &step::lstm_forward<T>;
  k.lstm_backward = &step::lstm_backward<T>;
  k.projected_commit = &step::projected_commit<T>;
  k.grad_h_accumulate = &step::grad_h_accumulate<T>;
  k.grad_h_carry = &step::grad_h_carry<T>;
  k.gru_forward = &step::gru_forward<T>;
  k.gru_backward = &step::gru_backward<T>;  // with the toolkit on; else the fused step
  k.lstm_backward_fused = &step::lstm_backward_fused<T>;
  k.gru_backward_fused = &step::gru_backward_fused<T>;
  k.grad_h_combine = &step::grad_h_combine<T>;
  k.lstm_norm_forward = &step::lstm_norm_forward<T>;
  k.lstm_norm_backward = &step::lstm_norm_backward<T>;
  k.gru_norm_forward = &step::gru_norm_forward<T>;
  k.gru_norm_backward = &step::gru_norm_backward<T>;
  return k;
}

}  // namespace cuda
}  // namespace fusedrnn
