// The layer driver: one function per direction of time, over a cell
// (cells.h). Each switches once on the plan's path (plan.h) and hands off to
// one function per path (forward.cpp, backward.cpp; layer_norm's step loops
// in norm.cpp). ops.cpp reads and checks the arguments (args.h) and calls
// these.
#pragma once

#include <optional>

#include "layer/args.h"
#include "layer/plan.h"

namespace fusedrnn::layer {

struct ForwardResult {
  Tensor output, h_n, c_n;  // c_n: cells with a cell state
  Tensor saved, cells;      // for the backward: (T, B, S*H), (T, B, H); zero steps in inference
};

template <class Cell>
ForwardResult forward(const LayerArgs& a, const LayerInputs& in, const Plan& plan);

// The backward op's tensors beyond the forward's inputs.
struct BackwardInputs {
  Tensor grad_output, grad_h_n;
  std::optional<Tensor> grad_c_n;
  Tensor output, saved;
  std::optional<Tensor> cells;
};

// The gradients of the forward's inputs, in its order (args.h, LayerInputs).
struct LayerGrads {
  Tensor x, w_ih, bias, w_hh, b_hh, w_hr, h0, c0;  // undefined where the cell has none
};

template <class Cell>
LayerGrads backward(const LayerArgs& a, const LayerInputs& in, const BackwardInputs& grads,
                    const Plan& plan);

// layer_norm's recurrence (norm.cpp): the step loop only.
struct NormResult {
  ForwardResult layer;
  Tensor hh_norm, c_norm, rstd;  // also saved
};
template <class Cell>
NormResult norm_forward(const LayerArgs& a, const NormInputs& in);

struct NormBackwardInputs {
  BackwardInputs layer;
  Tensor hh_norm, rstd;
  std::optional<Tensor> c_norm;
};
// The gradients of the norm op's inputs, in its order.
struct NormGrads {
  Tensor xproj, w_hh, b_hh, hh_weight, hh_bias, c_weight, c_bias, h0, c0;
};
template <class Cell>
NormGrads norm_backward(const LayerArgs& a, const NormInputs& in, const NormBackwardInputs& grads);

// How many calls asked for the persistent CUDA kernels and ran the step loop
// instead (the size did not fit on chip), since the library was loaded.
int64_t persistent_fallbacks();

}  // namespace fusedrnn::layer
