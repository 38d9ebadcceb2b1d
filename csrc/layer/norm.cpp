// The step loops of the layer_norm ops (the toolkit's layer_norm; ops.cpp
// documents the schemas), for every device and cell.
//
// The input side of a step, LN_ih(W_ih x_t) + biases, depends on no state:
// the caller computes it for all steps at once (fusedrnn/ops.py, with
// autograd through it) and hands it in as xproj. What is left is the
// recurrence: per step one GEMM for W_hh h_{t-1}, written straight into the
// saved buffer, then one row kernel (norm_rows.h) that normalises it, applies
// the cell (normalising a cell state too) and writes the new state. The
// backward runs the rows in reverse; the weight and norm gradients are
// reductions over all steps once the loop is done.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>

#include <type_traits>

#include "fusedrnn/norm_rows.h"
#include "layer/driver.h"
#include "layer/gemms.h"

namespace fusedrnn::layer {
namespace {

// Sum over steps and batch of a (T, B, W) tensor: a norm's gain or bias gradient.
Tensor sum_over_rows(const Tensor& t) { return t.sum(at::IntArrayRef{0, 1}); }

template <typename T>
const T* data_if(const std::optional<Tensor>& t) {
  return t ? t->data_ptr<T>() : nullptr;
}

// The forward's inputs in the compute dtype, and what it fills.
struct NormWork {
  Tensor xproj, w_hh_t, hh_weight, hh_bias;
  std::optional<Tensor> b_hh, c_weight, c_bias;
  Tensor output, h_state, c, saved, cells, hh_norm, c_norm, rstd;
  Tensor hh_scratch, saved_scratch, c_scratch;  // inference saves nothing: scratch per step
};

template <class Cell>
NormWork prepare_forward(const LayerArgs& a, const NormInputs& in) {
  const auto ct = a.compute;
  const int64_t B = a.batch, H = a.hidden, GH = Cell::kGates * H, S = Cell::kSaved * H;
  NormWork w;
  w.xproj = to_compute(in.xproj, ct);
  // ATen's product, rounded as the reference's: a norm divides by its row's
  // sigma, which amplifies a product rounded otherwise (StepProduct's kernel)
  // past the tests' bound of twice the reference's own error.
  w.w_hh_t = per_step_operand(to_compute(in.w_hh, ct), a.steps);
  w.hh_weight = to_compute(in.hh_weight, ct);
  w.hh_bias = to_compute(in.hh_bias, ct);
  w.b_hh = to_compute(in.b_hh, ct);
  w.c_weight = to_compute(in.c_weight, ct);
  w.c_bias = to_compute(in.c_bias, ct);
  const auto opts = w.xproj.options();
  const int64_t saved = a.save ? a.steps : 0, scratch = a.save ? 0 : B;
  w.output = at::empty({a.steps, B, H}, opts);
  w.saved = at::empty({saved, B, S}, opts);
  w.hh_norm = at::empty({saved, B, GH}, opts);
  w.rstd = at::empty({saved, B, kNorms<Cell>}, opts);
  w.hh_scratch = at::empty({scratch, GH}, opts);
  w.saved_scratch = at::empty({scratch, S}, opts);
  w.h_state = in.h0.to(ct).clone(at::MemoryFormat::Contiguous);
  if constexpr (Cell::kCellState) {
    w.cells = at::empty({saved, B, H}, opts);
    w.c_norm = at::empty({saved, B, H}, opts);
    w.c_scratch = at::empty({scratch, H}, opts);
    w.c = in.c0->to(ct).clone(at::MemoryFormat::Contiguous);
  }
  return w;
}

// Step t of a saved (T, B, W) buffer, or the step's scratch in inference.
template <typename T>
T* saved_or_scratch(const LayerArgs& a, const Tensor& saved, const Tensor& scratch, int64_t t) {
  if (!saved.defined()) return nullptr;
  return a.save ? at_step<T>(saved, t) : scratch.data_ptr<T>();
}

template <class Cell, typename T>
void norm_forward_steps(const LayerArgs& a, NormWork& w) {
  const auto kernels = cell_kernels_for<Cell, T>(w.xproj);
  const auto& mask = a.toolkit.recurrent_mask;
  Tensor h_masked = mask ? w.h_state * *mask : Tensor();
  const Tensor& operand = mask ? h_masked : w.h_state;
  for (int64_t s = 0; s < a.steps; ++s) {
    const int64_t t = step_time(s, a.steps, a.reverse);
    Tensor hh = a.save ? w.hh_norm.select(0, t) : w.hh_scratch;
    at::mm_out(hh, operand, w.w_hh_t);
    kernels.norm_forward(
        {.batch = a.batch, .hidden = a.hidden, .xproj = at_step<T>(w.xproj, t),
         .hh = hh.data_ptr<T>(), .hh_weight = w.hh_weight.data_ptr<T>(),
         .hh_bias = w.hh_bias.data_ptr<T>(), .b_hh = data_if<T>(w.b_hh),
         .c_weight = data_if<T>(w.c_weight), .c_bias = data_if<T>(w.c_bias),
         .c = data_or_null<T>(w.c), .c_norm = saved_or_scratch<T>(a, w.c_norm, w.c_scratch, t),
         .rstd = a.save ? at_step<T>(w.rstd, t) : nullptr,
         .saved = saved_or_scratch<T>(a, w.saved, w.saved_scratch, t),
         .cells = w.cells.defined() ? saved_at<T>(w.cells, t) : nullptr,
         .h_out = at_step<T>(w.output, t), .h_state = w.h_state.data_ptr<T>(),
         .lengths = data_or_null<int64_t>(a.lengths), .t = t,
         .toolkit = a.toolkit.at_step<T>(t, h_masked)});
  }
}

// The backward's inputs in the compute dtype, and what it fills.
struct NormBackwardWork {
  Tensor grad_output, w_hh, hh_weight, h0, output, saved, hh_norm, rstd;
  std::optional<Tensor> c_weight, c_bias, c_norm, cells, c0;
  Tensor d_xproj, d_hh_out, d_hh, d_c_norm, dh_state, dc;
  Tensor h_prev, c_prev;  // (T, B, H) the state before each step, where the cell reads it
};

template <class Cell>
NormBackwardWork prepare_backward(const LayerArgs& a, const NormInputs& in,
                                  const NormBackwardInputs& g) {
  const auto ct = a.compute;
  const int64_t GH = Cell::kGates * a.hidden;
  NormBackwardWork w;
  w.grad_output = to_compute(g.layer.grad_output, ct);
  w.w_hh = to_compute(in.w_hh, ct);
  w.hh_weight = to_compute(in.hh_weight, ct);
  w.h0 = to_compute(in.h0, ct);
  w.output = to_compute(g.layer.output, ct);
  w.saved = g.layer.saved.contiguous();
  w.hh_norm = g.hh_norm.contiguous();
  w.rstd = g.rstd.contiguous();
  const auto opts = w.saved.options();
  w.d_xproj = at::empty({a.steps, a.batch, GH}, opts);
  // Its products' gradient is the projection's where the cell shares them (LSTM).
  w.d_hh_out = Cell::kSharedGradGates < Cell::kGates ? at::empty_like(w.d_xproj) : w.d_xproj;
  w.d_hh = at::empty_like(w.d_xproj);
  w.dh_state = g.layer.grad_h_n.to(ct).clone(at::MemoryFormat::Contiguous);
  if constexpr (Cell::kReadsHPrev) w.h_prev = previous_states(w.output, w.h0, a.lengths, a.reverse);
  if constexpr (Cell::kCellState) {
    w.c_weight = to_compute(in.c_weight, ct);
    w.c_bias = to_compute(in.c_bias, ct);
    w.c_norm = g.c_norm->contiguous();
    w.cells = g.layer.cells->contiguous();
    w.c0 = to_compute(in.c0, ct);
    w.d_c_norm = at::empty({a.steps, a.batch, a.hidden}, opts);
    w.dc = g.layer.grad_c_n->to(ct).clone(at::MemoryFormat::Contiguous);
    w.c_prev = previous_states(*w.cells, *w.c0, a.lengths, a.reverse);
  }
  return w;
}

template <class Cell, typename T>
void norm_backward_steps(const LayerArgs& a, NormBackwardWork& w) {
  const int64_t B = a.batch, H = a.hidden;
  const auto kernels = cell_kernels_for<Cell, T>(w.saved);
  const auto state = state_kernels_for<T>(w.saved);
  const int64_t* lens = data_or_null<int64_t>(a.lengths);
  const auto opts = w.saved.options();
  Tensor dh_total = at::empty({B, H}, opts), rec = at::empty({B, H}, opts);
  auto at_t = [](const auto& seq, int64_t t) -> T* {
    if constexpr (std::is_same_v<std::decay_t<decltype(seq)>, Tensor>)
      return seq.defined() ? at_step<T>(seq, t) : nullptr;
    else
      return seq ? at_step<T>(*seq, t) : nullptr;
  };
  for (int64_t s = a.steps - 1; s >= 0; --s) {
    const int64_t t = step_time(s, a.steps, a.reverse);
    state.grad_h_accumulate({.batch = B, .h_size = H, .grad_out = at_step<T>(w.grad_output, t),
                             .dh_state = w.dh_state.data_ptr<T>(),
                             .dh_total = dh_total.data_ptr<T>(), .lengths = lens, .t = t});
    kernels.norm_backward(
        {.batch = B, .hidden = H, .saved = at_step<T>(w.saved, t),
         .hh_norm = at_step<T>(w.hh_norm, t), .c_norm = at_t(w.c_norm, t),
         .rstd = at_step<T>(w.rstd, t), .cells = at_t(w.cells, t), .c_prev = at_t(w.c_prev, t),
         .h_prev = at_t(w.h_prev, t), .hh_weight = w.hh_weight.data_ptr<T>(),
         .c_weight = data_if<T>(w.c_weight), .c_bias = data_if<T>(w.c_bias),
         .dh = dh_total.data_ptr<T>(), .dc = data_or_null<T>(w.dc),
         .d_xproj = at_step<T>(w.d_xproj, t), .d_hh_out = at_step<T>(w.d_hh_out, t),
         .d_hh = at_step<T>(w.d_hh, t), .d_c_norm = at_t(w.d_c_norm, t),
         .dh_state = w.dh_state.data_ptr<T>(), .lengths = lens, .t = t,
         .toolkit = a.toolkit.at_step<T>(t, Tensor())});
    // dh_state = clip(direct paths + mask * (d_hh @ W_hh)): params.h, GradHCombine.
    at::mm_out(rec, w.d_hh.select(0, t), w.w_hh);
    state.grad_h_combine({.batch = B, .h_size = H, .rec = rec.data_ptr<T>(),
                          .rec_mask = data_if<T>(a.toolkit.recurrent_mask),
                          .dh_state = w.dh_state.data_ptr<T>(),
                          .grad_clip = static_cast<T>(a.toolkit.grad_clip)});
  }
}

}  // namespace

template <class Cell>
NormResult norm_forward(const LayerArgs& a, const NormInputs& in) {
  const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  c10::OptionalDeviceGuard guard(in.xproj.device());
  NormWork w = prepare_forward<Cell>(a, in);
  AT_DISPATCH_FLOATING_TYPES(a.compute, "fusedrnn::norm_forward",
                             [&] { norm_forward_steps<Cell, scalar_t>(a, w); });
  NormResult r{{w.output.to(a.dtype), w.h_state.to(a.dtype), Tensor(), w.saved, w.cells},
               w.hh_norm, w.c_norm, w.rstd};
  if constexpr (Cell::kCellState) r.layer.c_n = w.c.to(a.dtype);
  return r;
}

template <class Cell>
NormGrads norm_backward(const LayerArgs& a, const NormInputs& in, const NormBackwardInputs& g) {
  const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  c10::OptionalDeviceGuard guard(g.layer.output.device());
  NormBackwardWork w = prepare_backward<Cell>(a, in, g);
  AT_DISPATCH_FLOATING_TYPES(a.compute, "fusedrnn::norm_backward",
                             [&] { norm_backward_steps<Cell, scalar_t>(a, w); });
  const auto out = [&](const Tensor& t) { return t.to(a.dtype); };
  NormGrads grads;
  grads.w_hh = out(recurrent_weight_grad(
      {w.d_hh}, previous_state_blocks(w.output, w.h0, a.lengths, a.reverse), a.toolkit));
  // hh = LN_hh(.) (+ b_hh): b_hh and the norm's bias get the same gradient.
  grads.hh_bias = out(sum_over_rows(w.d_hh_out));
  grads.hh_weight = out(sum_over_rows(w.d_hh_out * w.hh_norm));
  if constexpr (!Cell::kSumsProducts) grads.b_hh = grads.hh_bias.clone();  // no aliased outputs
  if constexpr (Cell::kCellState) {
    grads.c_weight = out(sum_over_rows(w.d_c_norm * *w.c_norm));
    grads.c_bias = out(sum_over_rows(w.d_c_norm));
    grads.c0 = out(w.dc);
  }
  grads.xproj = out(w.d_xproj);
  grads.h0 = out(w.dh_state);
  return grads;
}

#define FUSEDRNN_INSTANTIATE(Cell)                                                  \
  template NormResult norm_forward<Cell>(const LayerArgs&, const NormInputs&);      \
  template NormGrads norm_backward<Cell>(const LayerArgs&, const NormInputs&,      \
                                         const NormBackwardInputs&);
FUSEDRNN_FOR_EACH_CELL(FUSEDRNN_INSTANTIATE)
#undef FUSEDRNN_INSTANTIATE

}  // namespace fusedrnn::layer
