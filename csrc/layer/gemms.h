// The GEMMs of a layer over all its steps at once: the input projection,
// the input's and the weights' gradients. fp32 CPU tensors run on cpu::gemm
// (oneDNN's micro-kernel at the CPU's widest vectors; see cpu/gemm.h), the
// rest on ATen (cuBLAS on CUDA).
#pragma once

#include <optional>
#include <vector>

#include "layer/args.h"
#include "layer/steps.h"

namespace fusedrnn::layer {

// An operand over all steps as blocks of whole steps, (steps_i, B, W) each,
// in order: h before each step is h0 and then the output's first T - 1
// steps (previous_state_blocks), never joined into a copy of its own.
using StepBlocks = std::vector<Tensor>;

inline Tensor joined(const std::vector<Tensor>& blocks, int64_t dim) {
  return blocks.size() == 1 ? blocks.front() : at::cat(blocks, dim);
}

// (T, B, W) as (T * B, W) rows.
inline Tensor rows_of(const Tensor& seq) {
  return seq.reshape({seq.size(0) * seq.size(1), seq.size(2)});
}

// State before each step: init at the first step a sequence processes,
// else the state after the step processed just before. seq: (T, B, W),
// init: (B, W); the result in step blocks, mostly views of seq.
StepBlocks previous_state_blocks(const Tensor& seq, const Tensor& init,
                                 const std::optional<Tensor>& lengths, bool reverse);
// The same as one (T, B, W) tensor.
Tensor previous_states(const Tensor& seq, const Tensor& init,
                       const std::optional<Tensor>& lengths, bool reverse);

// a (M, K) @ b (K, N) (+ bias (N) on every row). b may be a transposed view.
Tensor gemm_over_steps(const Tensor& a, const Tensor& b, const std::optional<Tensor>& bias = {});

// x (T, B, I) @ w_ih^T + bias, for all steps in one GEMM: (T, B, G*H).
Tensor input_projection(const Tensor& x, const Tensor& w_ih, const std::optional<Tensor>& bias);
// The same for a 16-bit layer: fp32 (T, B, G*H), the fp32 bias in.
Tensor input_projection_half(const Tensor& x, const Tensor& w_ih,
                             const std::optional<Tensor>& bias_f32);

// The input's and the input weights' gradients from the gradient of the
// input projection, d_xproj (T, B, G*H): single GEMMs over all steps. With
// h_prev (cells whose recurrent product has the same gradient), W_hh's too,
// in the same GEMM as W_ih's.
struct InputGrads {
  Tensor input, w_ih, bias, w_hh;
};

// How the bias gradient, d_xproj's column sums over all steps, is formed.
enum class BiasGrad {
  kGemmRow,  // one more row of the weights' GEMM, ones^T d_xproj: d_xproj is read once
  kSum,      // ATen's sum: it adds pairwise, the GEMM in order (larger errors over many rows)
};

// d_xproj is taken by value: freed (when the caller moved its last reference
// in) before the weight gradients are copied out of their GEMM's result.
InputGrads input_projection_backward(Tensor d_xproj, const Tensor& x, const Tensor& w_ih,
                                     bool grad_input, BiasGrad bias,
                                     const StepBlocks& h_prev = {});
// A 16-bit layer's, from the 16-bit copy of d_xproj; the bias from the fp32 one.
InputGrads input_projection_backward_half(const Tensor& d_xproj, const Tensor& d_xproj_half,
                                          const Tensor& x, const Tensor& w_ih, bool grad_input,
                                          const StepBlocks& h_prev = {});

// a^T @ b for a (T, B, M), given as blocks of its columns, and each b of
// `bs`, over all steps: the weight gradients. The products may be views into
// one buffer; owned() copies them out (the callers say when).
std::vector<Tensor> gemm_tn_over_steps(const std::vector<Tensor>& a,
                                       const std::vector<StepBlocks>& bs);
std::vector<Tensor> owned(std::vector<Tensor> products);

// h_prev (T, B, P) as the recurrent product took it: times the recurrent
// dropout mask, the same at every step.
StepBlocks recurrent_operands(StepBlocks h_prev, const Toolkit& toolkit);

// W_hh's gradient d_hh^T @ h_prev, h_prev as the recurrent product took it;
// d_hh (T, B, G*H) as blocks of its columns (gemm_tn_over_steps' a).
Tensor recurrent_weight_grad(const std::vector<Tensor>& d_hh, const StepBlocks& h_prev,
                             const Toolkit& toolkit);

}  // namespace fusedrnn::layer
