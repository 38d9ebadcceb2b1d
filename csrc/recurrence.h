// The four ops' implementations (recurrence.cpp), device-agnostic: the same
// functions are registered for CPU and CUDA in ops.cpp. Schemas and argument
// meanings are documented there.
#pragma once

#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>

namespace fusedrnn {

using at::Tensor;

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& xproj, const Tensor& w_hh, const std::optional<Tensor>& w_hr, const Tensor& h0,
    const Tensor& c0, const std::optional<Tensor>& lengths, bool reverse, bool save_for_backward);

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& w_hh,
    const std::optional<Tensor>& w_hr, const Tensor& h0, const Tensor& c0, const Tensor& output,
    const Tensor& gates, const Tensor& cells, const std::optional<Tensor>& lengths, bool reverse);

std::tuple<Tensor, Tensor, Tensor> gru_forward(const Tensor& xproj, const Tensor& w_hh,
                                               const std::optional<Tensor>& b_hh, const Tensor& h0,
                                               const std::optional<Tensor>& lengths, bool reverse,
                                               bool save_for_backward);

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_backward(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& w_hh, const Tensor& h0,
    const Tensor& output, const Tensor& gates, const std::optional<Tensor>& lengths, bool reverse);

}  // namespace fusedrnn
