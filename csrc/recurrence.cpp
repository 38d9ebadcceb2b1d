// The step loops of the four ops, written once for every device.
//
// Forward, per step: one GEMM for the recurrent product (ATen, so cuBLAS on
// the current stream on CUDA) and one fused pointwise kernel that applies
// the gates and writes the output, the new state and what the backward
// needs. The input projection of all steps is one GEMM done by the caller
// (fusedrnn/ops.py), outside the recurrence.
//
// Backward, per step in reverse order: a small kernel adding the output's
// gradient, one fused pointwise kernel for the gate gradients, and one GEMM
// for the hidden state's gradient. Weight gradients are single GEMMs over
// all steps once the loop is done.
//
// fp16/bf16 tensors are computed in fp32 (state, gates, accumulation); the
// saved gates/cells are fp32 then, the outputs in the caller's dtype.
#include "recurrence.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/core/DeviceGuard.h>

#include <cstdlib>
#include <string>

#include "fusedrnn/kernels.h"
#include "fusedrnn/persistent.h"

namespace fusedrnn {
namespace {

using at::Tensor;

at::ScalarType compute_type(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

template <typename T>
StepKernels<T> kernels_for(const Tensor& t) {
  if (t.is_cuda()) {
#ifdef FUSEDRNN_WITH_CUDA
    return cuda::step_kernels<T>();
#else
    TORCH_CHECK(false, "fusedrnn: this build has no CUDA kernels (built without a CUDA toolkit)");
#endif
  }
  TORCH_CHECK(t.is_cpu(), "fusedrnn: unsupported device ", t.device());
  return cpu::step_kernels<T>();
}

// Index of the s-th step processed.
int64_t step_time(int64_t s, int64_t steps, bool reverse) { return reverse ? steps - 1 - s : s; }

template <typename T>
T* at_step(const Tensor& seq, int64_t t) {  // seq: contiguous (T, B, W)
  return seq.data_ptr<T>() + t * seq.size(1) * seq.size(2);
}

// A saved (T, B, W) buffer at step t, or nullptr when nothing is saved.
template <typename T>
T* saved_at(const Tensor& seq, int64_t t) {
  return seq.size(0) == 0 ? nullptr : at_step<T>(seq, t);
}

const int64_t* lengths_data(const std::optional<Tensor>& lengths) {
  return lengths ? lengths->data_ptr<int64_t>() : nullptr;
}

// ------------------------------------------------------------- checks
// The Python modules validate with friendlier messages first; these guard
// the ops themselves, which are public.

void check_rank_and_sizes(const Tensor& t, const char* name, at::IntArrayRef expected) {
  TORCH_CHECK(t.sizes() == expected, "fusedrnn: ", name, " must have shape ", expected, ", got ",
              t.sizes());
}

void check_same(const Tensor& ref, const Tensor& t, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), "fusedrnn: ", name, " is on ", t.device(),
              " but the input is on ", ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "fusedrnn: ", name, " has dtype ",
              t.scalar_type(), " but the input has dtype ", ref.scalar_type());
}

std::optional<Tensor> prepare_lengths(const std::optional<Tensor>& lengths, const Tensor& ref,
                                      int64_t steps, int64_t batch) {
  if (!lengths) return std::nullopt;
  TORCH_CHECK(lengths->dim() == 1 && lengths->size(0) == batch,
              "fusedrnn: lengths must have shape [", batch, "], got ", lengths->sizes());
  TORCH_CHECK(lengths->device() == ref.device(), "fusedrnn: lengths is on ", lengths->device(),
              " but the input is on ", ref.device());
  TORCH_CHECK(lengths->scalar_type() == at::kLong, "fusedrnn: lengths must be int64, got ",
              lengths->scalar_type());
  return lengths->contiguous();
}

void check_floating(const Tensor& t, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "fusedrnn: ", name,
              " must be a floating-point tensor, got ", t.scalar_type());
}

Tensor to_compute(const Tensor& t, at::ScalarType ct) { return t.to(ct).contiguous(); }

std::optional<Tensor> to_compute(const std::optional<Tensor>& t, at::ScalarType ct) {
  if (!t) return std::nullopt;
  return to_compute(*t, ct);
}

// State before each step: init at the first step a sequence processes,
// else the state after the step processed just before. seq: (T, B, W).
Tensor previous_states(const Tensor& seq, const Tensor& init,
                       const std::optional<Tensor>& lengths, bool reverse) {
  const int64_t steps = seq.size(0);
  Tensor prev = at::empty_like(seq);
  if (steps == 0) return prev;
  if (reverse) {
    prev.select(0, steps - 1).copy_(init);
    prev.narrow(0, 0, steps - 1).copy_(seq.narrow(0, 1, steps - 1));
    if (lengths) {
      // A reversed sequence starts at its own last step, lengths[b] - 1.
      auto t = at::arange(steps, lengths->options()).view({steps, 1});
      auto first = (t >= (*lengths - 1).view({1, -1})).unsqueeze(-1);
      prev = at::where(first, init.unsqueeze(0), prev);
    }
  } else {
    prev.select(0, 0).copy_(init);
    prev.narrow(0, 1, steps - 1).copy_(seq.narrow(0, 0, steps - 1));
  }
  return prev;
}

// ------------------------------------------------------ persistent path
// FUSEDRNN_PERSISTENT=1 runs the whole-sequence kernels (cuda/persistent.cuh)
// when the call is one they cover (CUDA, no projection, H within the
// on-chip limit), =0 never. Unset ("auto") keeps the standard path until a
// rule measured on a GPU replaces it: the kernels have not run on one yet.
bool persistent_requested(const Tensor& xproj) {
  // Empty sizes go to the standard path, which handles them without a launch.
  if (!xproj.is_cuda() || xproj.numel() == 0) return false;
  const char* env = std::getenv("FUSEDRNN_PERSISTENT");
  return env != nullptr && (std::string(env) == "1" || std::string(env) == "on");
}

#ifdef FUSEDRNN_WITH_CUDA
template <typename T>
bool persistent_kernel(const LstmSequence<T>& seq) { return cuda::persistent::lstm_forward<T>(seq); }
template <typename T>
bool persistent_kernel(const GruSequence<T>& seq) { return cuda::persistent::gru_forward<T>(seq); }
#endif

// Runs the persistent kernel for `seq`; false, with a one-time warning, when
// it cannot take this size, so the caller falls back to the step loop.
template <typename Seq>
bool run_persistent(const Seq& seq, const char* cell) {
#ifdef FUSEDRNN_WITH_CUDA
  if (persistent_kernel(seq)) return true;
  TORCH_WARN_ONCE("fusedrnn: the persistent ", cell, " kernel cannot run this size on this GPU ",
                  "(hidden ", seq.hidden, ", batch ", seq.batch, "); using the standard kernels");
#endif
  return false;
}

}  // namespace

// ============================================================== LSTM

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& xproj_in, const Tensor& w_hh_in, const std::optional<Tensor>& w_hr_in,
    const Tensor& h0_in, const Tensor& c0_in, const std::optional<Tensor>& lengths_in,
    bool reverse, bool save_for_backward) {
  TORCH_CHECK(xproj_in.dim() == 3, "fusedrnn: xproj must be (T, B, 4H), got ", xproj_in.sizes());
  check_floating(xproj_in, "xproj");
  const int64_t steps = xproj_in.size(0), batch = xproj_in.size(1);
  TORCH_CHECK(w_hh_in.dim() == 2 && w_hh_in.size(0) == xproj_in.size(2) &&
                  xproj_in.size(2) % 4 == 0,
              "fusedrnn: w_hh must be (4H, P) with 4H = xproj.size(2) = ", xproj_in.size(2),
              ", got ", w_hh_in.sizes());
  const int64_t hidden = w_hh_in.size(0) / 4, width = w_hh_in.size(1);
  const bool proj = w_hr_in.has_value();
  if (proj) {
    check_rank_and_sizes(*w_hr_in, "w_hr", {width, hidden});
    check_same(xproj_in, *w_hr_in, "w_hr");
  } else {
    TORCH_CHECK(width == hidden, "fusedrnn: w_hh must be (4H, H) without w_hr, got ",
                w_hh_in.sizes());
  }
  check_rank_and_sizes(h0_in, "h0", {batch, width});
  check_rank_and_sizes(c0_in, "c0", {batch, hidden});
  check_same(xproj_in, w_hh_in, "w_hh");
  check_same(xproj_in, h0_in, "h0");
  check_same(xproj_in, c0_in, "c0");
  c10::OptionalDeviceGuard guard(xproj_in.device());
  const auto lengths = prepare_lengths(lengths_in, xproj_in, steps, batch);

  const auto out_type = xproj_in.scalar_type();
  const auto ct = compute_type(out_type);
  const Tensor xproj = to_compute(xproj_in, ct), w_hh = to_compute(w_hh_in, ct);
  const auto w_hr = to_compute(w_hr_in, ct);
  const auto opts = xproj.options();

  Tensor output = at::empty({steps, batch, width}, opts);
  // Inference saves nothing: the kernels skip null gates/cells.
  const int64_t saved_steps = save_for_backward ? steps : 0;
  Tensor gates = at::empty({saved_steps, batch, 4 * hidden}, opts);
  Tensor cells = at::empty({saved_steps, batch, hidden}, opts);
  Tensor h_state = h0_in.to(ct).clone(at::MemoryFormat::Contiguous);
  Tensor c = c0_in.to(ct).clone(at::MemoryFormat::Contiguous);
  Tensor hh = at::empty({batch, 4 * hidden}, opts);
  Tensor h_raw = proj ? at::empty({batch, hidden}, opts) : Tensor();
  Tensor h_proj = proj ? at::empty({batch, width}, opts) : Tensor();
  // Row-major (P, 4H) copies: BLAS runs the per-step product several times
  // faster on them than on transposed views.
  const Tensor w_hh_t = w_hh.t().contiguous();
  const Tensor w_hr_t = proj ? w_hr->t().contiguous() : Tensor();

  AT_DISPATCH_FLOATING_TYPES(ct, "fusedrnn::lstm_forward", [&] {
    const int64_t* lens = lengths_data(lengths);
    if (!proj && persistent_requested(xproj)) {
      const Tensor h0 = h0_in.to(ct).contiguous();
      const LstmSequence<scalar_t> seq{steps, batch, hidden, reverse,
                                       xproj.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(),
                                       h0.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(),
                                       output.data_ptr<scalar_t>(), h_state.data_ptr<scalar_t>(),
                                       c.data_ptr<scalar_t>(), saved_at<scalar_t>(gates, 0),
                                       saved_at<scalar_t>(cells, 0), lens};
      if (run_persistent(seq, "LSTM")) return;
    }
    const auto k = kernels_for<scalar_t>(xproj);
    for (int64_t s = 0; s < steps; ++s) {
      const int64_t t = step_time(s, steps, reverse);
      at::mm_out(hh, h_state, w_hh_t);
      scalar_t* out_t = at_step<scalar_t>(output, t);
      k.lstm_forward({batch, hidden, at_step<scalar_t>(xproj, t), hh.data_ptr<scalar_t>(),
                      c.data_ptr<scalar_t>(), saved_at<scalar_t>(gates, t),
                      saved_at<scalar_t>(cells, t), proj ? h_raw.data_ptr<scalar_t>() : out_t,
                      proj ? nullptr : h_state.data_ptr<scalar_t>(), lens, t});
      if (proj) {
        at::mm_out(h_proj, h_raw, w_hr_t);
        k.masked_commit({batch, width, h_proj.data_ptr<scalar_t>(), out_t,
                         h_state.data_ptr<scalar_t>(), lens, t});
      }
    }
  });
  return {output.to(out_type), h_state.to(out_type), c.to(out_type), gates, cells};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const Tensor& grad_output_in, const Tensor& grad_h_n_in, const Tensor& grad_c_n_in,
    const Tensor& w_hh_in, const std::optional<Tensor>& w_hr_in, const Tensor& h0_in,
    const Tensor& c0_in, const Tensor& output_in, const Tensor& gates, const Tensor& cells,
    const std::optional<Tensor>& lengths_in, bool reverse) {
  TORCH_CHECK(gates.dim() == 3 && cells.dim() == 3 && output_in.dim() == 3,
              "fusedrnn: lstm_backward expects the (T, B, *) tensors saved by lstm_forward");
  const int64_t steps = gates.size(0), batch = gates.size(1), hidden = cells.size(2);
  const int64_t width = w_hh_in.size(1);
  const bool proj = w_hr_in.has_value();
  check_rank_and_sizes(grad_output_in, "grad_output", {steps, batch, width});
  check_rank_and_sizes(grad_h_n_in, "grad_h_n", {batch, width});
  check_rank_and_sizes(grad_c_n_in, "grad_c_n", {batch, hidden});
  check_rank_and_sizes(gates, "gates", {steps, batch, 4 * hidden});
  c10::OptionalDeviceGuard guard(gates.device());
  const auto lengths = prepare_lengths(lengths_in, gates, steps, batch);

  const auto out_type = w_hh_in.scalar_type();
  const auto ct = gates.scalar_type();
  const Tensor grad_output = to_compute(grad_output_in, ct), w_hh = to_compute(w_hh_in, ct);
  const auto w_hr = to_compute(w_hr_in, ct);
  const Tensor gates_c = gates.contiguous(), cells_c = cells.contiguous();
  const auto opts = gates_c.options();

  Tensor d_gates = at::empty({steps, batch, 4 * hidden}, opts);
  Tensor dh_total = at::empty({steps, batch, width}, opts);
  Tensor dh_state = grad_h_n_in.to(ct).clone(at::MemoryFormat::Contiguous);
  Tensor dc = grad_c_n_in.to(ct).clone(at::MemoryFormat::Contiguous);
  Tensor dh_raw = proj ? at::empty({batch, hidden}, opts) : Tensor();
  const Tensor c_prev = previous_states(cells_c, c0_in.to(ct), lengths, reverse);

  AT_DISPATCH_FLOATING_TYPES(ct, "fusedrnn::lstm_backward", [&] {
    const auto k = kernels_for<scalar_t>(gates_c);
    const int64_t* lens = lengths_data(lengths);
    for (int64_t s = steps - 1; s >= 0; --s) {
      const int64_t t = step_time(s, steps, reverse);
      const Tensor dh_total_t = dh_total.select(0, t), d_gates_t = d_gates.select(0, t);
      k.grad_h_accumulate({batch, width, at_step<scalar_t>(grad_output, t),
                           dh_state.data_ptr<scalar_t>(), dh_total_t.data_ptr<scalar_t>(), lens,
                           t});
      if (proj) at::mm_out(dh_raw, dh_total_t, *w_hr);
      k.lstm_backward({batch, hidden, at_step<scalar_t>(gates_c, t),
                       at_step<scalar_t>(cells_c, t), at_step<scalar_t>(c_prev, t),
                       (proj ? dh_raw : dh_total_t).data_ptr<scalar_t>(), dc.data_ptr<scalar_t>(),
                       d_gates_t.data_ptr<scalar_t>(), lens, t});
      if (lens) {
        k.grad_h_carry({batch, width, nullptr, dh_state.data_ptr<scalar_t>(),
                        dh_total_t.data_ptr<scalar_t>(), lens, t});
        dh_state.addmm_(d_gates_t, w_hh);
      } else {
        at::mm_out(dh_state, d_gates_t, w_hh);
      }
    }
  });

  const Tensor h_prev = previous_states(output_in.to(ct), h0_in.to(ct), lengths, reverse);
  const Tensor grad_w_hh =
      d_gates.view({steps * batch, 4 * hidden}).t().mm(h_prev.reshape({steps * batch, width}));
  Tensor grad_w_hr = at::empty({0}, w_hh_in.options());
  if (proj) {
    // Unprojected hidden state o * tanh(c); zero where inactive (o saved as 0).
    const Tensor h_raw_all = gates_c.narrow(2, 3 * hidden, hidden) * cells_c.tanh();
    grad_w_hr = dh_total.view({steps * batch, width})
                    .t()
                    .mm(h_raw_all.view({steps * batch, hidden}))
                    .to(out_type);
  }
  return {d_gates.to(out_type), grad_w_hh.to(out_type), grad_w_hr, dh_state.to(out_type),
          dc.to(out_type)};
}

// =============================================================== GRU

std::tuple<Tensor, Tensor, Tensor> gru_forward(const Tensor& xproj_in, const Tensor& w_hh_in,
                                               const std::optional<Tensor>& b_hh_in,
                                               const Tensor& h0_in,
                                               const std::optional<Tensor>& lengths_in,
                                               bool reverse, bool save_for_backward) {
  TORCH_CHECK(xproj_in.dim() == 3, "fusedrnn: xproj must be (T, B, 3H), got ", xproj_in.sizes());
  check_floating(xproj_in, "xproj");
  const int64_t steps = xproj_in.size(0), batch = xproj_in.size(1);
  TORCH_CHECK(xproj_in.size(2) % 3 == 0, "fusedrnn: xproj.size(2) must be 3H, got ",
              xproj_in.size(2));
  const int64_t hidden = xproj_in.size(2) / 3;
  check_rank_and_sizes(w_hh_in, "w_hh", {3 * hidden, hidden});
  check_rank_and_sizes(h0_in, "h0", {batch, hidden});
  check_same(xproj_in, w_hh_in, "w_hh");
  check_same(xproj_in, h0_in, "h0");
  if (b_hh_in) {
    check_rank_and_sizes(*b_hh_in, "b_hh", {3 * hidden});
    check_same(xproj_in, *b_hh_in, "b_hh");
  }
  c10::OptionalDeviceGuard guard(xproj_in.device());
  const auto lengths = prepare_lengths(lengths_in, xproj_in, steps, batch);

  const auto out_type = xproj_in.scalar_type();
  const auto ct = compute_type(out_type);
  const Tensor xproj = to_compute(xproj_in, ct), w_hh = to_compute(w_hh_in, ct);
  const auto b_hh = to_compute(b_hh_in, ct);
  const auto opts = xproj.options();

  Tensor output = at::empty({steps, batch, hidden}, opts);
  Tensor gates = at::empty({save_for_backward ? steps : 0, batch, 4 * hidden}, opts);
  Tensor h_state = h0_in.to(ct).clone(at::MemoryFormat::Contiguous);
  Tensor hh = at::empty({batch, 3 * hidden}, opts);
  const Tensor w_hh_t = w_hh.t().contiguous();  // see lstm_forward

  AT_DISPATCH_FLOATING_TYPES(ct, "fusedrnn::gru_forward", [&] {
    const int64_t* lens = lengths_data(lengths);
    if (persistent_requested(xproj)) {
      const Tensor h0 = h0_in.to(ct).contiguous();
      const GruSequence<scalar_t> seq{steps, batch, hidden, reverse,
                                      xproj.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(),
                                      b_hh ? b_hh->data_ptr<scalar_t>() : nullptr,
                                      h0.data_ptr<scalar_t>(), output.data_ptr<scalar_t>(),
                                      h_state.data_ptr<scalar_t>(), saved_at<scalar_t>(gates, 0),
                                      lens};
      if (run_persistent(seq, "GRU")) return;
    }
    const auto k = kernels_for<scalar_t>(xproj);
    for (int64_t s = 0; s < steps; ++s) {
      const int64_t t = step_time(s, steps, reverse);
      if (b_hh) {
        at::addmm_out(hh, *b_hh, h_state, w_hh_t);
      } else {
        at::mm_out(hh, h_state, w_hh_t);
      }
      k.gru_forward({batch, hidden, at_step<scalar_t>(xproj, t), hh.data_ptr<scalar_t>(),
                     h_state.data_ptr<scalar_t>(), saved_at<scalar_t>(gates, t),
                     at_step<scalar_t>(output, t), lens, t});
    }
  });
  return {output.to(out_type), h_state.to(out_type), gates};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_backward(
    const Tensor& grad_output_in, const Tensor& grad_h_n_in, const Tensor& w_hh_in,
    const Tensor& h0_in, const Tensor& output_in, const Tensor& gates,
    const std::optional<Tensor>& lengths_in, bool reverse) {
  TORCH_CHECK(gates.dim() == 3 && output_in.dim() == 3,
              "fusedrnn: gru_backward expects the (T, B, *) tensors saved by gru_forward");
  const int64_t steps = gates.size(0), batch = gates.size(1), hidden = gates.size(2) / 4;
  check_rank_and_sizes(grad_output_in, "grad_output", {steps, batch, hidden});
  check_rank_and_sizes(grad_h_n_in, "grad_h_n", {batch, hidden});
  check_rank_and_sizes(w_hh_in, "w_hh", {3 * hidden, hidden});
  c10::OptionalDeviceGuard guard(gates.device());
  const auto lengths = prepare_lengths(lengths_in, gates, steps, batch);

  const auto out_type = w_hh_in.scalar_type();
  const auto ct = gates.scalar_type();
  const Tensor grad_output = to_compute(grad_output_in, ct), w_hh = to_compute(w_hh_in, ct);
  const Tensor gates_c = gates.contiguous();
  const auto opts = gates_c.options();

  Tensor d_xproj = at::empty({steps, batch, 3 * hidden}, opts);
  Tensor d_hh = at::empty({steps, batch, 3 * hidden}, opts);
  Tensor dh_total = at::empty({batch, hidden}, opts);
  Tensor dh_state = grad_h_n_in.to(ct).clone(at::MemoryFormat::Contiguous);
  const Tensor h_prev = previous_states(output_in.to(ct), h0_in.to(ct), lengths, reverse);

  AT_DISPATCH_FLOATING_TYPES(ct, "fusedrnn::gru_backward", [&] {
    const auto k = kernels_for<scalar_t>(gates_c);
    const int64_t* lens = lengths_data(lengths);
    for (int64_t s = steps - 1; s >= 0; --s) {
      const int64_t t = step_time(s, steps, reverse);
      k.grad_h_accumulate({batch, hidden, at_step<scalar_t>(grad_output, t),
                           dh_state.data_ptr<scalar_t>(), dh_total.data_ptr<scalar_t>(), lens,
                           t});
      k.gru_backward({batch, hidden, at_step<scalar_t>(gates_c, t), at_step<scalar_t>(h_prev, t),
                      dh_total.data_ptr<scalar_t>(), at_step<scalar_t>(d_xproj, t),
                      at_step<scalar_t>(d_hh, t), dh_state.data_ptr<scalar_t>(), lens, t});
      dh_state.addmm_(d_hh.select(0, t), w_hh);
    }
  });

  const Tensor d_hh_rows = d_hh.view({steps * batch, 3 * hidden});
  const Tensor grad_w_hh = d_hh_rows.t().mm(h_prev.reshape({steps * batch, hidden}));
  const Tensor grad_b_hh = d_hh_rows.sum(0);
  return {d_xproj.to(out_type), grad_w_hh.to(out_type), grad_b_hh.to(out_type),
          dh_state.to(out_type)};
}

}  // namespace fusedrnn
