// The ops' implementations (recurrence.cpp; the layer_norm ones in
// norm_recurrence.cpp), device-agnostic: the same functions are registered
// for CPU and CUDA in ops.cpp, where the schemas and the arguments' meanings
// are documented.
#pragma once

#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>

namespace fusedrnn {

using at::Tensor;

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& input, const Tensor& w_ih, const std::optional<Tensor>& bias,
    const Tensor& w_hh, const std::optional<Tensor>& w_hr, const Tensor& h0, const Tensor& c0,
    const std::optional<Tensor>& lengths, bool reverse, bool save_for_backward,
    bool persistent, const std::optional<Tensor>& recurrent_mask,
    const std::optional<Tensor>& zoneout_h, const std::optional<Tensor>& zoneout_c,
    double cell_clip, double grad_clip);

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n,
    const Tensor& input, const Tensor& w_ih, const Tensor& w_hh,
    const std::optional<Tensor>& w_hr, const Tensor& h0, const Tensor& c0, const Tensor& output,
    const Tensor& gates, const Tensor& cells, const std::optional<Tensor>& lengths, bool reverse,
    bool grad_input, bool persistent, const std::optional<Tensor>& recurrent_mask,
    const std::optional<Tensor>& zoneout_h, const std::optional<Tensor>& zoneout_c,
    double cell_clip, double grad_clip);

std::tuple<Tensor, Tensor, Tensor> gru_forward(
    const Tensor& input, const Tensor& w_ih, const std::optional<Tensor>& b_ih,
    const Tensor& w_hh, const std::optional<Tensor>& b_hh, const Tensor& h0,
    const std::optional<Tensor>& lengths, bool reverse, bool save_for_backward,
    bool persistent, const std::optional<Tensor>& recurrent_mask,
    const std::optional<Tensor>& zoneout_h, double grad_clip);

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& h0, const Tensor& output, const Tensor& gates,
    const std::optional<Tensor>& lengths, bool reverse, bool grad_input, bool persistent,
    const std::optional<Tensor>& recurrent_mask, const std::optional<Tensor>& zoneout_h,
    double grad_clip);

// layer_norm (the toolkit): the recurrence of a layer whose input side,
// LN_ih(W_ih x) + biases, the caller computed (xproj).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_norm_forward(
    const Tensor& xproj, const Tensor& w_hh, const Tensor& hh_weight, const Tensor& hh_bias,
    const Tensor& c_weight, const Tensor& c_bias, const Tensor& h0, const Tensor& c0,
    const std::optional<Tensor>& lengths, bool reverse, bool save_for_backward,
    const std::optional<Tensor>& recurrent_mask, const std::optional<Tensor>& zoneout_h,
    const std::optional<Tensor>& zoneout_c, double cell_clip, double grad_clip);

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_norm_backward(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n,
    const Tensor& w_hh, const Tensor& hh_weight, const Tensor& c_weight, const Tensor& c_bias,
    const Tensor& h0, const Tensor& c0, const Tensor& output, const Tensor& gates,
    const Tensor& cells, const Tensor& hh_norm, const Tensor& c_norm, const Tensor& rstd,
    const std::optional<Tensor>& lengths, bool reverse,
    const std::optional<Tensor>& recurrent_mask, const std::optional<Tensor>& zoneout_h,
    const std::optional<Tensor>& zoneout_c, double cell_clip, double grad_clip);

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> gru_norm_forward(
    const Tensor& xproj, const Tensor& w_hh, const std::optional<Tensor>& b_hh,
    const Tensor& hh_weight, const Tensor& hh_bias, const Tensor& h0,
    const std::optional<Tensor>& lengths, bool reverse, bool save_for_backward,
    const std::optional<Tensor>& recurrent_mask, const std::optional<Tensor>& zoneout_h,
    double grad_clip);

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_norm_backward(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& w_hh,
    const Tensor& hh_weight, const Tensor& h0, const Tensor& output, const Tensor& gates,
    const Tensor& hh_norm, const Tensor& rstd, const std::optional<Tensor>& lengths,
    bool reverse, const std::optional<Tensor>& recurrent_mask,
    const std::optional<Tensor>& zoneout_h, double grad_clip);

// How many calls asked for the persistent CUDA kernels and ran the step loop
// instead (the size did not fit on chip), since the library was loaded.
int64_t persistent_fallbacks();

}  // namespace fusedrnn
