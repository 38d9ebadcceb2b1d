// The step loops of the layer_norm ops (the toolkit's layer_norm; ops.cpp
// documents the schemas), for every device, as recurrence.cpp's.
//
// The input side of a step, LN_ih(W_ih x_t) + biases, depends on no state:
// the caller computes it for all steps at once (fusedrnn/ops.py, with
// autograd through it) and hands it in as xproj. What is left is the
// recurrence: per step one GEMM for W_hh h_{t-1}, written straight into the
// saved buffer, then one row kernel (norm_rows.h) that normalises it, applies
// the gates, normalises the candidate cell (LSTM) and writes the new state.
// The backward runs the rows in reverse, composed with the toolkit's
// kernels for the hidden state's gradient; the weight and norm gradients are
// reductions over all steps once the loop is done.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/core/DeviceGuard.h>

#include "recurrence.h"
#include "step_loop.h"

namespace fusedrnn {
namespace {

using checks::compute_dtype_for;
using checks::OpArgs;

struct NormSizes {
  int64_t steps, batch, hidden;
};

// xproj (T, B, G*H) and w_hh (G*H, H): the sizes of the layer.
NormSizes check_norm_layer(const OpArgs& args, const Tensor& xproj, const Tensor& w_hh,
                           int64_t gates) {
  args.sequence(xproj, "xproj");
  args.supported_dtype(xproj, "xproj");
  if (xproj.size(2) % gates != 0)
    args.fail("xproj's last dimension must be " + std::to_string(gates) + "H, got shape " +
              c10::str(xproj.sizes()));
  const NormSizes s{xproj.size(0), xproj.size(1), xproj.size(2) / gates};
  args.tensor(w_hh, "w_hh", {gates * s.hidden, s.hidden}, xproj.scalar_type());
  return s;
}

// Sum over steps and batch of a (T, B, W) tensor: a norm's gain or bias gradient.
Tensor sum_over_rows(const Tensor& t) { return t.sum(at::IntArrayRef{0, 1}); }

}  // namespace

// ============================================================== LSTM

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_norm_forward(
    const Tensor& xproj_in, const Tensor& w_hh, const Tensor& hh_weight, const Tensor& hh_bias,
    const Tensor& c_weight, const Tensor& c_bias, const Tensor& h0, const Tensor& c0,
    const std::optional<Tensor>& lengths_in, bool reverse, bool save_for_backward,
    const std::optional<Tensor>& recurrent_mask, const std::optional<Tensor>& zoneout_h,
    const std::optional<Tensor>& zoneout_c, double cell_clip, double grad_clip) {
  const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  const OpArgs args("lstm_norm_forward", xproj_in);
  const NormSizes s = check_norm_layer(args, xproj_in, w_hh, 4);
  const int64_t steps = s.steps, batch = s.batch, hidden = s.hidden;
  const auto out_type = xproj_in.scalar_type();
  args.tensor(hh_weight, "hh_weight", {4 * hidden}, out_type);
  args.tensor(hh_bias, "hh_bias", {4 * hidden}, out_type);
  args.tensor(c_weight, "c_weight", {hidden}, out_type);
  args.tensor(c_bias, "c_bias", {hidden}, out_type);
  args.tensor(h0, "h0", {batch, hidden}, out_type);
  args.tensor(c0, "c0", {batch, hidden}, out_type);
  const auto lengths = args.lengths(lengths_in, batch);
  const Toolkit toolkit = check_toolkit(args, {steps, batch, hidden, hidden, false}, out_type,
                                        recurrent_mask, zoneout_h, zoneout_c, cell_clip, grad_clip);
  c10::OptionalDeviceGuard guard(xproj_in.device());

  const auto compute_type = compute_dtype_for(out_type);
  const Tensor xproj = to_compute(xproj_in, compute_type);
  // ATen's product, rounded as the reference's: a norm divides by its row's
  // sigma, which amplifies a product rounded otherwise (StepProduct's kernel)
  // past the tests' bound of twice the reference's own error.
  const Tensor w_hh_t = per_step_operand(to_compute(w_hh, compute_type), steps);
  const Tensor hh_w = to_compute(hh_weight, compute_type), hh_b = to_compute(hh_bias, compute_type);
  const Tensor c_w = to_compute(c_weight, compute_type), c_b = to_compute(c_bias, compute_type);
  const auto opts = xproj.options();
  const int64_t saved = save_for_backward ? steps : 0;
  Tensor output = at::empty({steps, batch, hidden}, opts);
  Tensor gates = at::empty({saved, batch, 4 * hidden}, opts);
  Tensor cells = at::empty({saved, batch, hidden}, opts);
  Tensor hh_norm = at::empty({saved, batch, 4 * hidden}, opts);
  Tensor c_norm = at::empty({saved, batch, hidden}, opts);
  Tensor rstd = at::empty({saved, batch, 2}, opts);
  Tensor h_state = h0.to(compute_type).clone(at::MemoryFormat::Contiguous);
  Tensor c = c0.to(compute_type).clone(at::MemoryFormat::Contiguous);
  // Inference saves nothing: the step's product, gates and candidate cell go to scratch.
  Tensor hh_scratch = at::empty({save_for_backward ? 0 : batch, 4 * hidden}, opts);
  Tensor gates_scratch = at::empty({save_for_backward ? 0 : batch, 4 * hidden}, opts);
  Tensor c_scratch = at::empty({save_for_backward ? 0 : batch, hidden}, opts);
  Tensor h_masked = toolkit.rec_mask ? h_state * *toolkit.rec_mask : Tensor();
  const Tensor& operand = toolkit.rec_mask ? h_masked : h_state;

  AT_DISPATCH_FLOATING_TYPES(compute_type, "fusedrnn::lstm_norm_forward", [&] {
    const auto kernels = kernels_for<scalar_t>(xproj);
    for (int64_t step = 0; step < steps; ++step) {
      const int64_t t = step_time(step, steps, reverse);
      Tensor hh = save_for_backward ? hh_norm.select(0, t) : hh_scratch;
      at::mm_out(hh, operand, w_hh_t);
      kernels.lstm_norm_forward(
          {.batch = batch, .hidden = hidden, .xproj = at_step<scalar_t>(xproj, t),
           .hh = hh.data_ptr<scalar_t>(), .hh_weight = hh_w.data_ptr<scalar_t>(),
           .hh_bias = hh_b.data_ptr<scalar_t>(), .c_weight = c_w.data_ptr<scalar_t>(),
           .c_bias = c_b.data_ptr<scalar_t>(), .c = c.data_ptr<scalar_t>(),
           .c_norm = save_for_backward ? at_step<scalar_t>(c_norm, t)
                                       : c_scratch.data_ptr<scalar_t>(),
           .rstd = saved_at<scalar_t>(rstd, t),
           .gates = save_for_backward ? at_step<scalar_t>(gates, t)
                                      : gates_scratch.data_ptr<scalar_t>(),
           .cells = saved_at<scalar_t>(cells, t), .h_out = at_step<scalar_t>(output, t),
           .h_state = h_state.data_ptr<scalar_t>(), .lengths = data_or_null<int64_t>(lengths),
           .t = t, .cell_clip = static_cast<scalar_t>(toolkit.cell_clip),
           .zone_h = step_or_null<scalar_t>(toolkit.zone_h, t),
           .zone_c = step_or_null<scalar_t>(toolkit.zone_c, t),
           .rec_mask = data_or_null<scalar_t>(toolkit.rec_mask),
           .h_masked = toolkit.rec_mask ? h_masked.data_ptr<scalar_t>() : nullptr});
    }
  });
  return {output.to(out_type), h_state.to(out_type), c.to(out_type), gates, cells, hh_norm,
          c_norm, rstd};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_norm_backward(
    const Tensor& grad_output_in, const Tensor& grad_h_n, const Tensor& grad_c_n,
    const Tensor& w_hh, const Tensor& hh_weight, const Tensor& c_weight, const Tensor& c_bias,
    const Tensor& h0, const Tensor& c0, const Tensor& output, const Tensor& gates,
    const Tensor& cells, const Tensor& hh_norm, const Tensor& c_norm, const Tensor& rstd,
    const std::optional<Tensor>& lengths_in, bool reverse,
    const std::optional<Tensor>& recurrent_mask, const std::optional<Tensor>& zoneout_h,
    const std::optional<Tensor>& zoneout_c, double cell_clip, double grad_clip) {
  const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  const OpArgs args("lstm_norm_backward", output);
  args.sequence(output, "output");
  args.supported_dtype(output, "output");
  const int64_t steps = output.size(0), batch = output.size(1), hidden = output.size(2);
  const auto out_type = output.scalar_type();
  const auto compute_type = compute_dtype_for(out_type);
  args.tensor(grad_output_in, "grad_output", {steps, batch, hidden}, out_type);
  args.tensor(grad_h_n, "grad_h_n", {batch, hidden}, out_type);
  args.tensor(grad_c_n, "grad_c_n", {batch, hidden}, out_type);
  args.tensor(w_hh, "w_hh", {4 * hidden, hidden}, out_type);
  args.tensor(hh_weight, "hh_weight", {4 * hidden}, out_type);
  args.tensor(c_weight, "c_weight", {hidden}, out_type);
  args.tensor(c_bias, "c_bias", {hidden}, out_type);
  args.tensor(h0, "h0", {batch, hidden}, out_type);
  args.tensor(c0, "c0", {batch, hidden}, out_type);
  args.tensor(gates, "gates", {steps, batch, 4 * hidden}, compute_type);
  args.tensor(cells, "cells", {steps, batch, hidden}, compute_type);
  args.tensor(hh_norm, "hh_norm", {steps, batch, 4 * hidden}, compute_type);
  args.tensor(c_norm, "c_norm", {steps, batch, hidden}, compute_type);
  args.tensor(rstd, "rstd", {steps, batch, 2}, compute_type);
  const auto lengths = args.lengths(lengths_in, batch);
  const Toolkit toolkit = check_toolkit(args, {steps, batch, hidden, hidden, false}, out_type,
                                        recurrent_mask, zoneout_h, zoneout_c, cell_clip, grad_clip);
  c10::OptionalDeviceGuard guard(output.device());

  const Tensor grad_output = to_compute(grad_output_in, compute_type);
  const Tensor w_hh_c = to_compute(w_hh, compute_type);
  const Tensor hh_w = to_compute(hh_weight, compute_type);
  const Tensor c_w = to_compute(c_weight, compute_type), c_b = to_compute(c_bias, compute_type);
  const Tensor gates_c = gates.contiguous(), hh_norm_c = hh_norm.contiguous();
  const Tensor c_norm_c = c_norm.contiguous(), rstd_c = rstd.contiguous();
  const Tensor h0_c = to_compute(h0, compute_type);
  const auto opts = gates_c.options();

  Tensor d_gates = at::empty({steps, batch, 4 * hidden}, opts);
  Tensor d_hh = at::empty({steps, batch, 4 * hidden}, opts);
  Tensor d_c_norm = at::empty({steps, batch, hidden}, opts);
  Tensor dh_total = at::empty({batch, hidden}, opts);
  Tensor rec = at::empty({batch, hidden}, opts);
  Tensor dh_state = grad_h_n.to(compute_type).clone(at::MemoryFormat::Contiguous);
  Tensor dc = grad_c_n.to(compute_type).clone(at::MemoryFormat::Contiguous);
  const Tensor c_prev = previous_states(cells.contiguous(), c0.to(compute_type), lengths, reverse);

  AT_DISPATCH_FLOATING_TYPES(compute_type, "fusedrnn::lstm_norm_backward", [&] {
    const auto kernels = kernels_for<scalar_t>(gates_c);
    const int64_t* lens = data_or_null<int64_t>(lengths);
    for (int64_t step = steps - 1; step >= 0; --step) {
      const int64_t t = step_time(step, steps, reverse);
      kernels.grad_h_accumulate({.batch = batch, .h_size = hidden,
                                 .grad_out = at_step<scalar_t>(grad_output, t),
                                 .dh_state = dh_state.data_ptr<scalar_t>(),
                                 .dh_total = dh_total.data_ptr<scalar_t>(), .lengths = lens,
                                 .t = t});
      kernels.lstm_norm_backward(
          {.batch = batch, .hidden = hidden, .gates = at_step<scalar_t>(gates_c, t),
           .hh_norm = at_step<scalar_t>(hh_norm_c, t), .c_norm = at_step<scalar_t>(c_norm_c, t),
           .rstd = at_step<scalar_t>(rstd_c, t), .c_prev = at_step<scalar_t>(c_prev, t),
           .hh_weight = hh_w.data_ptr<scalar_t>(), .c_weight = c_w.data_ptr<scalar_t>(),
           .c_bias = c_b.data_ptr<scalar_t>(), .dh = dh_total.data_ptr<scalar_t>(),
           .dc = dc.data_ptr<scalar_t>(), .d_gates = at_step<scalar_t>(d_gates, t),
           .d_hh = at_step<scalar_t>(d_hh, t), .d_c_norm = at_step<scalar_t>(d_c_norm, t),
           .lengths = lens, .t = t, .cell_clip = static_cast<scalar_t>(toolkit.cell_clip),
           .grad_clip = static_cast<scalar_t>(toolkit.grad_clip),
           .zone_h = step_or_null<scalar_t>(toolkit.zone_h, t),
           .zone_c = step_or_null<scalar_t>(toolkit.zone_c, t)});
      // dh_state = clip(direct paths + mask * (d_hh @ W_hh)): params.h, GradHCombine.
      kernels.grad_h_carry({.batch = batch, .h_size = hidden, .grad_out = nullptr,
                            .dh_state = dh_state.data_ptr<scalar_t>(),
                            .dh_total = dh_total.data_ptr<scalar_t>(), .lengths = lens, .t = t,
                            .zone = step_or_null<scalar_t>(toolkit.zone_h, t)});
      at::mm_out(rec, d_hh.select(0, t), w_hh_c);
      kernels.grad_h_combine({.batch = batch, .h_size = hidden, .rec = rec.data_ptr<scalar_t>(),
                              .rec_mask = data_or_null<scalar_t>(toolkit.rec_mask),
                              .dh_state = dh_state.data_ptr<scalar_t>(),
                              .grad_clip = static_cast<scalar_t>(toolkit.grad_clip)});
    }
  });

  const Tensor grad_w_hh = recurrent_weight_grad(
      {d_hh}, previous_state_blocks(to_compute(output, compute_type), h0_c, lengths, reverse),
      toolkit);
  return {d_gates.to(out_type),
          grad_w_hh.to(out_type),
          sum_over_rows(d_gates * hh_norm_c).to(out_type),
          sum_over_rows(d_gates).to(out_type),
          sum_over_rows(d_c_norm * c_norm_c).to(out_type),
          sum_over_rows(d_c_norm).to(out_type),
          dh_state.to(out_type),
          dc.to(out_type)};
}

// =============================================================== GRU

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> gru_norm_forward(
    const Tensor& xproj_in, const Tensor& w_hh, const std::optional<Tensor>& b_hh,
    const Tensor& hh_weight, const Tensor& hh_bias, const Tensor& h0,
    const std::optional<Tensor>& lengths_in, bool reverse, bool save_for_backward,
    const std::optional<Tensor>& recurrent_mask, const std::optional<Tensor>& zoneout_h,
    double grad_clip) {
  const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  const OpArgs args("gru_norm_forward", xproj_in);
  const NormSizes s = check_norm_layer(args, xproj_in, w_hh, 3);
  const int64_t steps = s.steps, batch = s.batch, hidden = s.hidden;
  const auto out_type = xproj_in.scalar_type();
  if (b_hh) args.tensor(*b_hh, "b_hh", {3 * hidden}, out_type);
  args.tensor(hh_weight, "hh_weight", {3 * hidden}, out_type);
  args.tensor(hh_bias, "hh_bias", {3 * hidden}, out_type);
  args.tensor(h0, "h0", {batch, hidden}, out_type);
  const auto lengths = args.lengths(lengths_in, batch);
  const Toolkit toolkit = check_toolkit(args, {steps, batch, hidden, hidden, false}, out_type,
                                        recurrent_mask, zoneout_h, std::nullopt, 0.0, grad_clip);
  c10::OptionalDeviceGuard guard(xproj_in.device());

  const auto compute_type = compute_dtype_for(out_type);
  const Tensor xproj = to_compute(xproj_in, compute_type);
  // ATen's product, rounded as the reference's: a norm divides by its row's
  // sigma, which amplifies a product rounded otherwise (StepProduct's kernel)
  // past the tests' bound of twice the reference's own error.
  const Tensor w_hh_t = per_step_operand(to_compute(w_hh, compute_type), steps);
  const auto b_hh_c = to_compute(b_hh, compute_type);
  const Tensor hh_w = to_compute(hh_weight, compute_type), hh_b = to_compute(hh_bias, compute_type);
  const auto opts = xproj.options();
  const int64_t saved = save_for_backward ? steps : 0;
  Tensor output = at::empty({steps, batch, hidden}, opts);
  Tensor gates = at::empty({saved, batch, 4 * hidden}, opts);
  Tensor hh_norm = at::empty({saved, batch, 3 * hidden}, opts);
  Tensor rstd = at::empty({saved, batch}, opts);
  Tensor h_state = h0.to(compute_type).clone(at::MemoryFormat::Contiguous);
  Tensor hh_scratch = at::empty({save_for_backward ? 0 : batch, 3 * hidden}, opts);
  Tensor h_masked = toolkit.rec_mask ? h_state * *toolkit.rec_mask : Tensor();
  const Tensor& operand = toolkit.rec_mask ? h_masked : h_state;

  AT_DISPATCH_FLOATING_TYPES(compute_type, "fusedrnn::gru_norm_forward", [&] {
    const auto kernels = kernels_for<scalar_t>(xproj);
    for (int64_t step = 0; step < steps; ++step) {
      const int64_t t = step_time(step, steps, reverse);
      Tensor hh = save_for_backward ? hh_norm.select(0, t) : hh_scratch;
      at::mm_out(hh, operand, w_hh_t);
      kernels.gru_norm_forward(
          {.batch = batch, .hidden = hidden, .xproj = at_step<scalar_t>(xproj, t),
           .hh = hh.data_ptr<scalar_t>(), .hh_weight = hh_w.data_ptr<scalar_t>(),
           .hh_bias = hh_b.data_ptr<scalar_t>(), .b_hh = data_or_null<scalar_t>(b_hh_c),
           .rstd = save_for_backward ? rstd.select(0, t).data_ptr<scalar_t>() : nullptr,
           .gates = saved_at<scalar_t>(gates, t), .h_out = at_step<scalar_t>(output, t),
           .h_state = h_state.data_ptr<scalar_t>(), .lengths = data_or_null<int64_t>(lengths),
           .t = t, .zone_h = step_or_null<scalar_t>(toolkit.zone_h, t),
           .rec_mask = data_or_null<scalar_t>(toolkit.rec_mask),
           .h_masked = toolkit.rec_mask ? h_masked.data_ptr<scalar_t>() : nullptr});
    }
  });
  return {output.to(out_type), h_state.to(out_type), gates, hh_norm, rstd};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_norm_backward(
    const Tensor& grad_output_in, const Tensor& grad_h_n, const Tensor& w_hh,
    const Tensor& hh_weight, const Tensor& h0, const Tensor& output, const Tensor& gates,
    const Tensor& hh_norm, const Tensor& rstd, const std::optional<Tensor>& lengths_in,
    bool reverse, const std::optional<Tensor>& recurrent_mask,
    const std::optional<Tensor>& zoneout_h, double grad_clip) {
  const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  const OpArgs args("gru_norm_backward", output);
  args.sequence(output, "output");
  args.supported_dtype(output, "output");
  const int64_t steps = output.size(0), batch = output.size(1), hidden = output.size(2);
  const auto out_type = output.scalar_type();
  const auto compute_type = compute_dtype_for(out_type);
  args.tensor(grad_output_in, "grad_output", {steps, batch, hidden}, out_type);
  args.tensor(grad_h_n, "grad_h_n", {batch, hidden}, out_type);
  args.tensor(w_hh, "w_hh", {3 * hidden, hidden}, out_type);
  args.tensor(hh_weight, "hh_weight", {3 * hidden}, out_type);
  args.tensor(h0, "h0", {batch, hidden}, out_type);
  args.tensor(gates, "gates", {steps, batch, 4 * hidden}, compute_type);
  args.tensor(hh_norm, "hh_norm", {steps, batch, 3 * hidden}, compute_type);
  args.tensor(rstd, "rstd", {steps, batch}, compute_type);
  const auto lengths = args.lengths(lengths_in, batch);
  const Toolkit toolkit = check_toolkit(args, {steps, batch, hidden, hidden, false}, out_type,
                                        recurrent_mask, zoneout_h, std::nullopt, 0.0, grad_clip);
  c10::OptionalDeviceGuard guard(output.device());

  const Tensor grad_output = to_compute(grad_output_in, compute_type);
  const Tensor w_hh_c = to_compute(w_hh, compute_type);
  const Tensor hh_w = to_compute(hh_weight, compute_type);
  const Tensor gates_c = gates.contiguous(), hh_norm_c = hh_norm.contiguous();
  const Tensor rstd_c = rstd.contiguous();
  const Tensor output_c = to_compute(output, compute_type), h0_c = to_compute(h0, compute_type);
  const auto opts = gates_c.options();

  Tensor d_xproj = at::empty({steps, batch, 3 * hidden}, opts);
  Tensor d_hh_out = at::empty({steps, batch, 3 * hidden}, opts);
  Tensor d_hh = at::empty({steps, batch, 3 * hidden}, opts);
  Tensor dh_total = at::empty({batch, hidden}, opts);
  Tensor rec = at::empty({batch, hidden}, opts);
  Tensor dh_state = grad_h_n.to(compute_type).clone(at::MemoryFormat::Contiguous);
  const Tensor h_prev = previous_states(output_c, h0_c, lengths, reverse);

  AT_DISPATCH_FLOATING_TYPES(compute_type, "fusedrnn::gru_norm_backward", [&] {
    const auto kernels = kernels_for<scalar_t>(gates_c);
    const int64_t* lens = data_or_null<int64_t>(lengths);
    for (int64_t step = steps - 1; step >= 0; --step) {
      const int64_t t = step_time(step, steps, reverse);
      kernels.grad_h_accumulate({.batch = batch, .h_size = hidden,
                                 .grad_out = at_step<scalar_t>(grad_output, t),
                                 .dh_state = dh_state.data_ptr<scalar_t>(),
                                 .dh_total = dh_total.data_ptr<scalar_t>(), .lengths = lens,
                                 .t = t});
      kernels.gru_norm_backward(
          {.batch = batch, .hidden = hidden, .gates = at_step<scalar_t>(gates_c, t),
           .hh_norm = at_step<scalar_t>(hh_norm_c, t),
           .rstd = rstd_c.select(0, t).data_ptr<scalar_t>(), .hh_weight = hh_w.data_ptr<scalar_t>(),
           .h_prev = at_step<scalar_t>(h_prev, t), .dh = dh_total.data_ptr<scalar_t>(),
           .d_xproj = at_step<scalar_t>(d_xproj, t), .d_hh_out = at_step<scalar_t>(d_hh_out, t),
           .d_hh = at_step<scalar_t>(d_hh, t), .dh_state = dh_state.data_ptr<scalar_t>(),
           .lengths = lens, .t = t, .zone_h = step_or_null<scalar_t>(toolkit.zone_h, t)});
      at::mm_out(rec, d_hh.select(0, t), w_hh_c);
      kernels.grad_h_combine({.batch = batch, .h_size = hidden, .rec = rec.data_ptr<scalar_t>(),
                              .rec_mask = data_or_null<scalar_t>(toolkit.rec_mask),
                              .dh_state = dh_state.data_ptr<scalar_t>(),
                              .grad_clip = static_cast<scalar_t>(toolkit.grad_clip)});
    }
  });

  const Tensor grad_w_hh = recurrent_weight_grad({d_hh}, {h_prev}, toolkit);
  // hh = LN_hh(.) + b_hh: b_hh and the norm's bias get the same gradient.
  const Tensor grad_bias = sum_over_rows(d_hh_out);
  return {d_xproj.to(out_type),
          grad_w_hh.to(out_type),
          grad_bias.to(out_type),
          sum_over_rows(d_hh_out * hh_norm_c).to(out_type),
          grad_bias.to(out_type),
          dh_state.to(out_type)};
}

}  // namespace fusedrnn
