// The backward of one layer in one direction (the whole BPTT recurrence in
// one op), for every cell.
//
// Per step in reverse order: on CUDA one fused kernel (the hidden state's
// gradient, the cell's gradients, what passes on to the earlier step) and
// one GEMM for the hidden state's gradient; the CPU (and a projected layer,
// or one with the toolkit) composes a small kernel adding the output's
// gradient, the cell's kernel and the GEMM. The persistent paths run every
// step in one OpenMP team or cooperative launch. The input's gradient and
// the weight gradients are single GEMMs over all steps once the loop is done.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>

#include "cpu/persistent.h"
#include "fusedrnn/persistent.h"
#include "layer/driver.h"
#include "layer/gemms.h"

namespace fusedrnn::layer {

void note_persistent_fallback(const char* cell, int64_t hidden, int64_t batch);

namespace {

// Whether a cell's recurrent product has gradients of its own (GRU: hh_n's),
// beside those it shares with the input projection.
template <class Cell>
constexpr bool kSplitGrad = Cell::kSharedGradGates < Cell::kGates;

// The backward's tensors in the compute dtype, and the gradients the paths fill.
struct BackwardWork {
  Tensor grad_output, w_hh, h0, output, saved;
  Tensor output_in;  // as the op got it: a 16-bit layer's W_hh gradient reads it
  std::optional<Tensor> w_hr, c0, cells;
  Tensor d_xproj;       // (T, B, G*H)
  Tensor d_hh;          // split cells: (T, B, G*H), or its own gates only on the persistent paths
  Tensor dh_state, dc;  // in: the gradients of h_n, c_n; out: of h0, c0
  Tensor dh_total;      // projected layers: (T, B, P) every step's, for W_hr's gradient
  Tensor d_xproj_half, d_hh_half;  // 16-bit copies for the GEMMs
};

template <class Cell>
BackwardWork prepare(const LayerArgs& a, const LayerInputs& in, const BackwardInputs& g,
                     const Plan& plan) {
  const auto ct = a.compute;
  BackwardWork w;
  w.grad_output = to_compute(g.grad_output, ct);
  w.w_hh = to_compute(in.w_hh, ct);
  w.h0 = to_compute(in.h0, ct);
  w.output = to_compute(g.output, ct);
  w.output_in = g.output;
  w.saved = g.saved.contiguous();
  w.w_hr = to_compute(in.w_hr, ct);
  w.c0 = to_compute(in.c0, ct);
  if (g.cells) w.cells = g.cells->contiguous();
  const auto opts = w.saved.options();
  const int64_t GH = Cell::kGates * a.hidden;
  w.d_xproj = at::empty({a.steps, a.batch, GH}, opts);
  if constexpr (kSplitGrad<Cell>) {
    const bool persistent = plan.path == Path::cpu_persistent || plan.path == Path::cuda_persistent;
    const int64_t own = (Cell::kGates - Cell::kSharedGradGates) * a.hidden;
    w.d_hh = at::empty({a.steps, a.batch, persistent ? own : GH}, opts);
  }
  w.dh_state = g.grad_h_n.to(ct).clone(at::MemoryFormat::Contiguous);
  if constexpr (Cell::kCellState) w.dc = g.grad_c_n->to(ct).clone(at::MemoryFormat::Contiguous);
  if (plan.gemms == Gemms::half_operands) {
    w.d_xproj_half = at::empty({a.steps, a.batch, GH}, in.x.options());
    if constexpr (kSplitGrad<Cell>) w.d_hh_half = at::empty({a.steps, a.batch, GH}, in.x.options());
  }
  return w;
}

template <typename T>
BackwardSequence<T> backward_sequence(const LayerArgs& a, const BackwardWork& w) {
  return {.steps = a.steps, .batch = a.batch, .hidden = a.hidden, .reverse = a.reverse,
          .w_hh = w.w_hh.data_ptr<T>(), .h0 = w.h0.data_ptr<T>(), .c0 = data_or_null<T>(w.c0),
          .output = w.output.data_ptr<T>(), .grad_out = w.grad_output.data_ptr<T>(),
          .saved = w.saved.data_ptr<T>(), .cells = data_or_null<T>(w.cells),
          .d_xproj = w.d_xproj.data_ptr<T>(), .d_hh = data_or_null<T>(w.d_hh),
          .dh = w.dh_state.data_ptr<T>(), .dc = data_or_null<T>(w.dc),
          .lengths = data_or_null<int64_t>(a.lengths)};
}

template <class Cell, typename T>
void cpu_persistent_backward(const LayerArgs& a, const BackwardWork& w) {
  if constexpr (kCpuKernels) cpu::persistent_backward<Cell, T>(backward_sequence<T>(a, w));
}

// False, having run nothing, when the kernel cannot take this size.
template <class Cell, typename T>
bool cuda_persistent_backward(const LayerArgs& a, const BackwardWork& w) {
  if (a.steps == 0 || a.batch == 0 || a.hidden == 0) return false;  // the step loop's
#ifdef FUSEDRNN_CUDA_KERNELS
  if (cuda::persistent::backward<Cell, T>(backward_sequence<T>(a, w))) return true;
  note_persistent_fallback(Cell::kName, a.hidden, a.batch);
#endif
  return false;
}

// The state before each step, which the step loops' kernels read.
struct PreviousStates {
  Tensor h, c;  // (T, B, H) where the cell reads them
};

template <class Cell>
PreviousStates previous_for_steps(const LayerArgs& a, const BackwardWork& w) {
  PreviousStates prev;
  if constexpr (Cell::kReadsHPrev) prev.h = previous_states(w.output, w.h0, a.lengths, a.reverse);
  if constexpr (Cell::kCellState) prev.c = previous_states(*w.cells, *w.c0, a.lengths, a.reverse);
  return prev;
}

// One backward step's view for the cell's kernel, at step t.
template <class Cell, typename T>
BackwardStep<T> backward_step(const LayerArgs& a, const BackwardWork& w,
                              const PreviousStates& prev, int64_t t) {
  const int64_t offset = t * a.batch * Cell::kGates * a.hidden;
  return {.batch = a.batch, .hidden = a.hidden, .saved = at_step<T>(w.saved, t),
          .cells = w.cells ? at_step<T>(*w.cells, t) : nullptr,
          .c_prev = prev.c.defined() ? at_step<T>(prev.c, t) : nullptr,
          .h_prev = prev.h.defined() ? at_step<T>(prev.h, t) : nullptr, .dh = nullptr,
          .dc = data_or_null<T>(w.dc), .d_xproj = at_step<T>(w.d_xproj, t),
          .d_hh = w.d_hh.defined() ? at_step<T>(w.d_hh, t) : nullptr, .dh_state = nullptr,
          .lengths = data_or_null<int64_t>(a.lengths), .t = t,
          .toolkit = a.toolkit.at_step<T>(t, Tensor()),
          .d_xproj_half = w.d_xproj_half.defined() ? half_bits(w.d_xproj_half) + offset : nullptr,
          .d_hh_half = w.d_hh_half.defined() ? half_bits(w.d_hh_half) + offset : nullptr,
          .half_type = half_type_of(a.dtype)};
}

// The gradient W_hh multiplies at each step: the recurrent product's.
template <class Cell>
const Tensor& recurrent_grad(const BackwardWork& w, bool half) {
  if constexpr (kSplitGrad<Cell>) return half ? w.d_hh_half : w.d_hh;
  return half ? w.d_xproj_half : w.d_xproj;
}

// CUDA, no projection, no toolkit: one kernel and one GEMM per step (GradFlow,
// params.h): dh_state carries, dh_gemm receives each step's gradients @ W_hh.
template <class Cell, typename T>
void fused_steps_backward(const LayerArgs& a, const Plan& plan, const LayerInputs& in,
                          BackwardWork& w) {
  const bool half = plan.gemms == Gemms::half_operands;
  const auto kernels = cell_kernels_for<Cell, T>(w.saved);
  const PreviousStates prev = previous_for_steps<Cell>(a, w);
  const Tensor w_hh = half ? in.w_hh.contiguous() : w.w_hh;
  Tensor dh_gemm = at::zeros_like(w.dh_state);
  const std::vector<Tensor> d_rec = recurrent_grad<Cell>(w, half).unbind(0);  // viewed once
  for (int64_t s = a.steps - 1; s >= 0; --s) {
    const int64_t t = step_time(s, a.steps, a.reverse);
    kernels.backward_fused(backward_step<Cell, T>(a, w, prev, t),
                           {.grad_out = at_step<T>(w.grad_output, t),
                            .dh_gemm = dh_gemm.data_ptr<T>(),
                            .dh_carry = w.dh_state.data_ptr<T>()});
    if (half)
      mm_f32_out(dh_gemm, d_rec[t], w_hh);
    else
      at::mm_out(dh_gemm, d_rec[t], w_hh);
  }
  w.dh_state.add_(dh_gemm);  // the gradient reaching h0
}

// The rest: per step the output's gradient added, the cell's kernel (after
// W_hr's product for a projected layer), the carry, and the GEMM back into
// h_{t-1} (masked and clamped by the toolkit).
template <class Cell, typename T>
void composed_steps_backward(const LayerArgs& a, BackwardWork& w) {
  const int64_t B = a.batch, P = a.h_size;
  const auto opts = w.saved.options();
  const auto kernels = cell_kernels_for<Cell, T>(w.saved);
  const auto state = state_kernels_for<T>(w.saved);
  const PreviousStates prev = previous_for_steps<Cell>(a, w);
  const int64_t* lens = data_or_null<int64_t>(a.lengths);
  w.dh_total = at::empty({a.projected ? a.steps : 1, B, P}, opts);
  Tensor dh_raw = a.projected ? at::empty({B, a.hidden}, opts) : Tensor();
  Tensor rec = a.toolkit.any() ? at::empty({B, P}, opts) : Tensor();
  for (int64_t s = a.steps - 1; s >= 0; --s) {
    const int64_t t = step_time(s, a.steps, a.reverse);
    const Tensor dh_total = w.dh_total.select(0, a.projected ? t : 0);
    const GradHStep<T> bookkeeping{.batch = B, .h_size = P, .grad_out = at_step<T>(w.grad_output, t),
                                   .dh_state = w.dh_state.data_ptr<T>(),
                                   .dh_total = dh_total.data_ptr<T>(), .lengths = lens, .t = t};
    state.grad_h_accumulate(bookkeeping);
    if (a.projected) at::mm_out(dh_raw, dh_total, *w.w_hr);
    BackwardStep<T> step = backward_step<Cell, T>(a, w, prev, t);
    step.dh = (a.projected ? dh_raw : dh_total).data_ptr<T>();
    step.dh_state = a.projected ? nullptr : w.dh_state.data_ptr<T>();
    kernels.backward(step);
    if (a.projected) state.grad_h_carry(bookkeeping);
    const Tensor d_rec = recurrent_grad<Cell>(w, false).select(0, t);
    if (!a.toolkit.any()) {
      w.dh_state.addmm_(d_rec, w.w_hh);
      continue;
    }
    // dh_state = clip(direct paths + mask * (d_rec @ W_hh)): params.h, GradHCombine.
    at::mm_out(rec, d_rec, w.w_hh);
    state.grad_h_combine({.batch = B, .h_size = P, .rec = rec.data_ptr<T>(),
                          .rec_mask = data_or_null<T>(a.toolkit.recurrent_mask),
                          .dh_state = w.dh_state.data_ptr<T>(),
                          .grad_clip = static_cast<T>(a.toolkit.grad_clip)});
  }
}

// ------------------------------------------------------ weight gradients

// A projected LSTM's W_hr: dh_total^T @ h~, h~ = o * tanh(c) (zero where inactive: o saved as 0).
Tensor projection_grad(const LayerArgs& a, const BackwardWork& w, int output_gate) {
  const int64_t rows = a.steps * a.batch;
  const Tensor h_raw = w.saved.narrow(2, output_gate * a.hidden, a.hidden) * w.cells->tanh();
  return w.dh_total.view({rows, a.h_size}).t().mm(h_raw.view({rows, a.hidden})).to(a.dtype);
}

// Cells whose products share one gradient (LSTM, RNN): W_ih's, W_hh's and the
// bias's in one GEMM over all steps.
template <class Cell>
LayerGrads shared_grads(const LayerArgs& a, const Plan& plan, const LayerInputs& in,
                        BackwardWork& w) {
  const bool half = plan.gemms == Gemms::half_operands;
  // 16-bit layers: h_prev in its own type, exactly the GEMM operands of the forward.
  const StepBlocks h_prev = half ? previous_state_blocks(w.output_in, in.h0, a.lengths, a.reverse)
                                 : previous_state_blocks(w.output, w.h0, a.lengths, a.reverse);
  LayerGrads grads;
  if constexpr (Cell::kProjection)
    grads.w_hr = a.projected ? projection_grad(a, w, Cell::kOutputGate) : at::empty({0}, in.x.options());
  const InputGrads g =
      half ? input_projection_backward_half(w.d_xproj, w.d_xproj_half, in.x, in.w_ih, a.save, h_prev)
           : input_projection_backward(std::move(w.d_xproj), to_compute(in.x, a.compute),
                                       to_compute(in.w_ih, a.compute), a.save, BiasGrad::kGemmRow,
                                       recurrent_operands(h_prev, a.toolkit));
  grads.x = g.input;
  grads.w_ih = g.w_ih;
  grads.bias = g.bias;
  grads.w_hh = g.w_hh;
  return grads;
}

// Cells whose recurrent product has gradients of its own (GRU): W_hh's from
// them first, then W_ih's; b_hh's shared gates are the bias's.
template <class Cell>
LayerGrads split_grads(const LayerArgs& a, const Plan& plan, const LayerInputs& in,
                       BackwardWork& w) {
  const bool half = plan.gemms == Gemms::half_operands;
  const int64_t shared = Cell::kSharedGradGates * a.hidden, GH = Cell::kGates * a.hidden;
  LayerGrads grads;
  // W_hh's gradient first: d_hh is freed before the input projection's
  // backward allocates its operands.
  if (half) {
    const StepBlocks h_prev = previous_state_blocks(w.output_in, in.h0, a.lengths, a.reverse);
    grads.w_hh = mm_f32(rows_of(w.d_hh_half).t(), rows_of(joined(h_prev, 0)));  // exact: h was 16-bit
  } else {
    const std::vector<Tensor> d_rec =
        w.d_hh.size(2) == GH ? std::vector{w.d_hh}
                             : std::vector{w.d_xproj.narrow(2, 0, shared), w.d_hh};
    grads.w_hh = recurrent_weight_grad(
        d_rec, previous_state_blocks(w.output, w.h0, a.lengths, a.reverse), a.toolkit);
  }
  w.output.reset();
  const int64_t own = w.d_hh.size(2) - (w.d_hh.size(2) == GH ? shared : 0);
  const Tensor b_hh_own = rows_of(w.d_hh.narrow(2, w.d_hh.size(2) - own, own)).sum(0);
  w.d_hh.reset();
  w.d_hh_half.reset();
  // The biases summed by ATen: the GEMM row's in-order sums measured past the
  // benchmark's gate (twice torch.nn's error) at T=100 B=64.
  const InputGrads g =
      half ? input_projection_backward_half(w.d_xproj, w.d_xproj_half, in.x, in.w_ih, a.save)
           : input_projection_backward(std::move(w.d_xproj), to_compute(in.x, a.compute),
                                       to_compute(in.w_ih, a.compute), a.save, BiasGrad::kSum);
  grads.x = g.input;
  grads.w_ih = g.w_ih;
  grads.bias = g.bias;
  grads.b_hh = at::cat({g.bias.narrow(0, 0, shared), b_hh_own});
  return grads;
}

}  // namespace

template <class Cell>
LayerGrads backward(const LayerArgs& a, const LayerInputs& in, const BackwardInputs& g,
                    const Plan& plan) {
  const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  c10::OptionalDeviceGuard guard(in.x.device());
  BackwardWork w = prepare<Cell>(a, in, g, plan);
  AT_DISPATCH_FLOATING_TYPES(a.compute, "fusedrnn::backward", [&] {
    using T = scalar_t;
    switch (plan.path) {
      case Path::cpu_persistent: return cpu_persistent_backward<Cell, T>(a, w);
      case Path::cuda_persistent:
        if (cuda_persistent_backward<Cell, T>(a, w)) return;
        if constexpr (kSplitGrad<Cell>)  // it fell back: the step loop's full d_hh
          w.d_hh = at::empty({a.steps, a.batch, Cell::kGates * a.hidden}, w.saved.options());
        return fused_steps_backward<Cell, T>(a, plan, in, w);
      case Path::fused_steps: return fused_steps_backward<Cell, T>(a, plan, in, w);
      case Path::composed_steps: return composed_steps_backward<Cell, T>(a, w);
    }
  });
  LayerGrads grads = kSplitGrad<Cell> ? split_grads<Cell>(a, plan, in, w)
                                      : shared_grads<Cell>(a, plan, in, w);
  auto out = [&](Tensor& t) { if (t.defined()) t = t.to(a.dtype); };
  grads.h0 = w.dh_state;
  if constexpr (Cell::kCellState) grads.c0 = w.dc;
  for (Tensor* t : {&grads.x, &grads.w_ih, &grads.bias, &grads.w_hh, &grads.b_hh, &grads.h0,
                    &grads.c0})
    out(*t);
  return grads;
}

#define FUSEDRNN_INSTANTIATE(Cell)                                                 \
  template LayerGrads backward<Cell>(const LayerArgs&, const LayerInputs&,        \
                                     const BackwardInputs&, const Plan&);
FUSEDRNN_FOR_EACH_CELL(FUSEDRNN_INSTANTIATE)
#undef FUSEDRNN_INSTANTIATE

}  // namespace fusedrnn::layer
