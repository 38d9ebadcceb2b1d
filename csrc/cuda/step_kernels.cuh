// CUDA versions of the per-step pointwise kernels declared in step_kernels.h.
//
// One small kernel per job, generic over the cell. Each thread owns element
// (b, j) of a (B, H) buffer and walks the batch with a grid-stride loop; the
// gate arithmetic is the cell's (cells/*.h), which the CPU path runs too, so
// the CPU tests cover it.
//
// Launches go on the current stream with no allocation, no host
// synchronisation and no atomics, so a step is deterministic and can be
// captured into a CUDA graph. The params structs are plain sizes and
// pointers: they are passed to the kernels by value.
//
// Included only by step_kernels_{float,double}.cu, each of which explicitly
// instantiates the kernel sets for its dtype.
#pragma once

#include <algorithm>
#include <cstdint>

#include "compat.cuh"
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

// ------------------------------------------------------------- forward

template <class Cell, typename T>
__global__ void forward_kernel(const ForwardStep<T> p) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  const int64_t H = p.hidden, n = p.batch * H;
  const bool reads_h = p.h_state != nullptr && (Cell::kReadsHPrev || p.toolkit.zone_h != nullptr);
  for (int64_t idx = first_index(); idx < n; idx += grid_stride()) {
    const int64_t b = idx / H, j = idx - b * H;
    T* saved = p.saved != nullptr ? p.saved + b * S * H + j : nullptr;  // value k at k * H
    if (!row_active(p.lengths, p.t, b)) {
      // Finished sequence: state carried, zero output and zero saved values.
      if (saved != nullptr)
        for (int k = 0; k < S; ++k) saved[k * H] = T(0);
      if (p.cells != nullptr) p.cells[idx] = p.c[idx];
      p.h_out[idx] = T(0);
      continue;  // h_state, c and h_half keep their values
    }
    typename Cell::template Inputs<T> in;
    for (int g = 0; g < G; ++g) {
      in.x[g] = p.xproj[b * G * H + g * H + j];
      in.hh[g] = p.hh[b * G * H + g * H + j];
      if (p.b_hh != nullptr) in.hh[g] += p.b_hh[g * H + j];
    }
    if (reads_h) in.h_prev = p.h_state[idx];
    if constexpr (Cell::kCellState) in.c_prev = p.c[idx];
    const auto out = Cell::forward(in, element_toolkit(p.toolkit, idx));
    if (saved != nullptr)
      for (int k = 0; k < S; ++k) saved[k * H] = out.saved[k];
    if constexpr (Cell::kCellState) {
      p.c[idx] = out.c;
      if (p.cells != nullptr) p.cells[idx] = out.c;
    }
    p.h_out[idx] = out.h;
    if (p.h_state != nullptr) p.h_state[idx] = out.h;
    if (p.toolkit.rec_mask != nullptr) p.toolkit.h_masked[idx] = out.h * p.toolkit.rec_mask[idx];
    store_half(p.h_half, idx, out.h, p.half_type);
  }
}

// ------------------------------------------------------------ backward

// The cell's inputs at element (b, j), the gradients dh (and dc) given.
template <class Cell, typename T>
__device__ __forceinline__ typename Cell::template GradInputs<T> grad_inputs(
    const BackwardStep<T>& p, int64_t b, int64_t j, T dh) {
  const int64_t H = p.hidden, idx = b * H + j;
  typename Cell::template GradInputs<T> in;
  for (int k = 0; k < Cell::kSaved; ++k) in.saved[k] = p.saved[b * Cell::kSaved * H + k * H + j];
  if constexpr (Cell::kCellState) {
    in.c = p.cells[idx];
    in.c_prev = p.c_prev[idx];
    in.dc = p.dc[idx];
  }
  if constexpr (Cell::kReadsHPrev) in.h_prev = p.h_prev[idx];
  in.dh = dh;
  return in;
}

// A step's gradients at (b, j) (zero where inactive), and their 16-bit copies.
template <class Cell, typename T>
__device__ __forceinline__ void store_grads(const BackwardStep<T>& p, int64_t b, int64_t j,
                                            const typename Cell::template Grads<T>& d) {
  const int64_t H = p.hidden, row = b * Cell::kGates * H;
  for (int g = 0; g < Cell::kGates; ++g) {
    const int64_t k = row + g * H + j;
    p.d_xproj[k] = d.d_x[g];
    store_half(p.d_xproj_half, k, d.d_x[g], p.half_type);
    if (p.d_hh != nullptr) {
      p.d_hh[k] = d.d_hh[g];
      store_half(p.d_hh_half, k, d.d_hh[g], p.half_type);
    }
  }
  if constexpr (Cell::kCellState) p.dc[b * H + j] = d.dc_prev;
}

// With the toolkit or a projection: dh is the step's total (grad_h_accumulate).
template <class Cell, typename T>
__global__ void backward_kernel(const BackwardStep<T> p) {
  const int64_t H = p.hidden, n = p.batch * H;
  for (int64_t idx = first_index(); idx < n; idx += grid_stride()) {
    const int64_t b = idx / H, j = idx - b * H;
    const T dh = p.dh[idx];  // read before dh_state is written: they may alias
    const auto tk = element_toolkit(p.toolkit, idx);
    typename Cell::template Grads<T> d;
    if (row_active(p.lengths, p.t, b)) {
      d = Cell::backward(grad_inputs<Cell>(p, b, j, dh), tk);
    } else {  // the gradients pass straight through (dc clamped by grad_clip)
      typename Cell::template GradInputs<T> in;
      in.dh = dh;
      if constexpr (Cell::kCellState) in.dc = p.dc[idx];
      d = Cell::carry_grad(in, tk);
    }
    store_grads<Cell>(p, b, j, d);
    if (p.dh_state != nullptr) p.dh_state[idx] = d.dh_prev;
  }
}

// One launch per backward step instead of three (GradFlow in params.h): the
// gradient reaching h, the cell's backward and what passes on to the earlier
// step, for layers without projection or toolkit.
template <typename T>
struct FusedBackward {
  BackwardStep<T> step;
  GradFlow<T> flow;
};

template <class Cell, typename T>
__global__ void backward_fused_kernel(const FusedBackward<T> k) {
  const BackwardStep<T>& p = k.step;
  const int64_t H = p.hidden, n = p.batch * H;
  const ElementToolkit<T> off;
  for (int64_t idx = first_index(); idx < n; idx += grid_stride()) {
    const int64_t b = idx / H, j = idx - b * H;
    const bool active = row_active(p.lengths, p.t, b);
    const T dh = k.flow.dh_carry[idx] + k.flow.dh_gemm[idx] + (active ? k.flow.grad_out[idx] : T(0));
    typename Cell::template Grads<T> d;
    if (active) {
      d = Cell::backward(grad_inputs<Cell>(p, b, j, dh), off);
    } else {  // h, c and their gradients pass straight through
      typename Cell::template GradInputs<T> in;
      in.dh = dh;
      if constexpr (Cell::kCellState) in.dc = p.dc[idx];
      d = Cell::carry_grad(in, off);
    }
    store_grads<Cell>(p, b, j, d);
    k.flow.dh_carry[idx] = d.dh_prev;  // the GEMM adds the rest
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
    // Active rows restart from zero before the caller adds dG @ W_hh;
    // inactive rows carry the gradient to the earlier step unchanged.
    p.dh_state[idx] = row_active(p.lengths, p.t, idx / W) ? T(0) : p.dh_total[idx];
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

template <class Cell, typename T>
__global__ void norm_forward_kernel(const NormForwardStep<T> p) {
  const BlockRow<T> row = block_row<T>();
  for (int64_t b = blockIdx.x; b < p.batch; b += gridDim.x) norm_forward_row<Cell>(row, p, b);
}

template <class Cell, typename T>
__global__ void norm_backward_kernel(const NormBackwardStep<T> p) {
  const BlockRow<T> row = block_row<T>();
  for (int64_t b = blockIdx.x; b < p.batch; b += gridDim.x) norm_backward_row<Cell>(row, p, b);
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

template <class Cell, typename T>
void forward(const ForwardStep<T>& p) {
  launch(forward_kernel<Cell, T>, p, p.batch * p.hidden);
}
template <class Cell, typename T>
void backward(const BackwardStep<T>& p) {
  launch(backward_kernel<Cell, T>, p, p.batch * p.hidden);
}
template <class Cell, typename T>
void backward_fused(const BackwardStep<T>& p, const GradFlow<T>& flow) {
  launch(backward_fused_kernel<Cell, T>, FusedBackward<T>{p, flow}, p.batch * p.hidden);
}
template <class Cell, typename T>
void norm_forward(const NormForwardStep<T>& p) {
  launch_rows<T>(norm_forward_kernel<Cell, T>, p);
}
template <class Cell, typename T>
void norm_backward(const NormBackwardStep<T>& p) {
  launch_rows<T>(norm_backward_kernel<Cell, T>, p);
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
void grad_h_combine(const GradHCombine<T>& p) {
  launch(grad_h_combine_kernel<T>, p, p.batch * p.h_size);
}

}  // namespace step

// The definitions behind the declarations in step_kernels.h; each
// step_kernels_<dtype>.cu explicitly instantiates them for one T.
template <class Cell, typename T>
CellKernels<Cell, T> cell_kernels() {
  CellKernels<Cell, T> k;
  k.forward = &step::forward<Cell, T>;
  k.backward = &step::backward<Cell, T>;  // with the toolkit or a projection; else the fused step
  k.norm_forward = &step::norm_forward<Cell, T>;
  k.norm_backward = &step::norm_backward<Cell, T>;
  k.backward_fused = &step::backward_fused<Cell, T>;
  return k;
}

template <typename T>
StateKernels<T> state_kernels() {
  StateKernels<T> k;
  k.projected_commit = &step::projected_commit<T>;
  k.grad_h_accumulate = &step::grad_h_accumulate<T>;
  k.grad_h_carry = &step::grad_h_carry<T>;
  k.grad_h_combine = &step::grad_h_combine<T>;
  return k;
}

}  // namespace cuda
}  // namespace fusedrnn
