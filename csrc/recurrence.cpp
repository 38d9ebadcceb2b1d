// The step loops of the four ops, written once for every device.
//
// Forward: the input projection of all steps is one GEMM; then, per step,
// one GEMM for the recurrent product (ATen, so cuBLAS on the current stream
// on CUDA) and one fused pointwise kernel that applies the gates and writes
// the output, the new state and what the backward needs.
//
// Backward, per step in reverse order: on CUDA one fused kernel (the hidden
// state's gradient, the gate gradients, what passes on to the earlier step)
// and one GEMM for the hidden state's gradient; the CPU (and a projected
// layer) composes a small kernel adding the output's gradient, the gate
// gradients' kernel and the GEMM. The input's gradient and the weight
// gradients are single GEMMs over all steps once the loop is done.
//
// fp16/bf16 tensors keep state, gates and pointwise math in fp32; the saved
// gates/cells are fp32 then, the outputs in the caller's dtype. On the CUDA
// kernels (and on their SIMT build) the GEMMs of a layer without projection
// take 16-bit operands with fp32 results (tensor cores): the step kernels
// write h and the gate gradients also in the 16-bit type for them. fp32
// GEMMs follow torch's TF32 flag (ATen's cuBLAS calls do).
#include "recurrence.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <atomic>
#include <cmath>
#include <vector>

#include "cpu/gemm.h"
#include "cpu/persistent.h"
#include "fusedrnn/persistent.h"
#include "fusedrnn/step_kernels.h"
#include "op_checks.h"
#include "step_loop.h"

// The CUDA kernels are built for CUDA tensors (FUSEDRNN_WITH_CUDA), or in
// the SIMT build (FUSEDRNN_SIMT, csrc/simt/) for CPU tensors: there the CUDA
// sources run on the CPU and stand in for a GPU, in place of the CPU kernels,
// with ATen's GEMMs in cuBLAS's place.
#if defined(FUSEDRNN_WITH_CUDA) || defined(FUSEDRNN_SIMT)
#define FUSEDRNN_CUDA_KERNELS 1
#endif

namespace fusedrnn {
namespace {

using checks::compute_dtype_for;
using checks::OpArgs;

// ------------------------------------------------ 16-bit GEMM operands

// Whether a layer of `dtype` on `on` runs its GEMMs on 16-bit operands: fp16
// and bf16 where the CUDA kernels run (CUDA tensors; CPU tensors in the SIMT
// build), without projection.
bool half_gemms(at::ScalarType dtype, const Tensor& on, bool projected) {
  const bool half = dtype == at::kHalf || dtype == at::kBFloat16;
  const bool on_kernel_device = kCpuKernels ? on.is_cuda() : on.is_cpu();
  return half && on_kernel_device && !projected;
}

HalfType half_type_of(at::ScalarType dtype) {
  return dtype == at::kBFloat16 ? HalfType::bf16 : HalfType::fp16;
}

std::uint16_t* half_bits(const Tensor& t) {
  return reinterpret_cast<std::uint16_t*>(t.data_ptr());
}

// a @ b for 16-bit a, b into fp32 `out`. cuBLAS multiplies on the tensor
// cores and accumulates in fp32; in the SIMT build ATen's CPU GEMM stands in,
// on the same operands (their products are exact in fp32).
void mm_f32_out(Tensor& out, const Tensor& a, const Tensor& b) {
  if (a.is_cuda())
    at::mm_out(out, a, b, at::kFloat);
  else
    at::mm_out(out, a.to(at::kFloat), b.to(at::kFloat));
}

Tensor mm_f32(const Tensor& a, const Tensor& b) {
  Tensor out = at::empty({a.size(0), b.size(1)}, a.options().dtype(at::kFloat));
  mm_f32_out(out, a, b);
  return out;
}

// The big GEMMs of a layer (all steps at once). fp32 CPU tensors run on
// cpu::gemm (oneDNN's micro-kernel at the CPU's widest vectors; see
// cpu/gemm.h), the rest on ATen.
// Below kMinGemmRows rows (a short call) the copies cpu::gemm needs (row-major
// operands) cost more than it saves.
constexpr int64_t kMinGemmRows = 32;
// gemm_tn_over_steps takes cpu::gemm from this many multiply-adds.
constexpr int64_t kMinTnGemmFmas = 32 << 20;
bool use_cpu_gemm(const Tensor& a) {
  if constexpr (kCpuKernels)
    return a.is_cpu() && a.scalar_type() == at::kFloat && cpu::have_brgemm() &&
           a.size(0) >= kMinGemmRows;
  else
    return false;
}

// a (M, K) @ b (K, N) (+ bias (N) on every row). b may be a transposed view.
Tensor gemm_over_steps(const Tensor& a, const Tensor& b, const std::optional<Tensor>& bias = {}) {
  if constexpr (kCpuKernels) {
    if (use_cpu_gemm(a)) {
      const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
      const Tensor a_c = a.contiguous();
      const bool b_transposed = b.stride(0) == 1 && b.stride(1) != 1;
      const Tensor b_c = b_transposed ? b.t().contiguous() : b.contiguous();  // a view: no copy
      // A copy even when M == 1: the GEMM accumulates into it, never into the bias.
      Tensor out = bias ? bias->expand({M, N}).clone(at::MemoryFormat::Contiguous)
                        : at::empty({M, N}, a.options());
      cpu::gemm(M, N, K, a_c.data_ptr<float>(), K, b_c.data_ptr<float>(), b_transposed ? K : N,
                b_transposed, out.data_ptr<float>(), N, /*accumulate=*/bias.has_value());
      return out;
    }
    // A few rows (a streaming step) times w_ih^T, w_ih as stored: the input projection.
    if (a.size(0) <= cpu::kMaxFewRows && b.t().is_contiguous()) {
      Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
      StepProduct(b.t(), 1, a.size(0))(out, a.contiguous(), bias);
      return out;
    }
  }
  return bias ? at::addmm(*bias, a, b) : at::mm(a, b);
}

// x (T, B, I) @ w_ih^T + bias, for all steps in one GEMM: (T, B, G*H).
Tensor input_projection(const Tensor& x, const Tensor& w_ih, const std::optional<Tensor>& bias) {
  const Tensor rows = x.reshape({x.size(0) * x.size(1), x.size(2)});
  return gemm_over_steps(rows, w_ih.t(), bias).view({x.size(0), x.size(1), w_ih.size(0)});
}

// The input's and the input weights' gradients from the gradient of the
// input projection, d_xproj (T, B, G*H): single GEMMs over all steps. With
// h_prev (LSTM, whose recurrent product has the same gradient), W_hh's too,
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
                                     const StepBlocks& h_prev = {}) {
  std::vector<StepBlocks> operands = {{x}};
  if (!h_prev.empty()) operands.push_back(h_prev);
  if (bias == BiasGrad::kGemmRow)
    operands.push_back({at::ones({d_xproj.size(0), d_xproj.size(1), 1}, d_xproj.options())});
  std::vector<Tensor> products = gemm_tn_over_steps({d_xproj}, operands);
  InputGrads grads;
  grads.input = grad_input ? gemm_over_steps(rows_of(d_xproj), w_ih).view(x.sizes())
                           : at::empty({0}, x.options());
  if (bias == BiasGrad::kSum) grads.bias = rows_of(d_xproj).sum(0);
  d_xproj.reset();
  products = owned(std::move(products));
  grads.w_ih = products.front();
  if (!h_prev.empty()) grads.w_hh = products[1];
  if (bias == BiasGrad::kGemmRow) grads.bias = products.back().view({-1});
  return grads;
}

// The input projection of a 16-bit layer: fp32 (T, B, G*H), biases (fp32) in.
Tensor input_projection_half(const Tensor& x, const Tensor& w_ih,
                             const std::optional<Tensor>& bias_f32) {
  Tensor out = mm_f32(x.reshape({x.size(0) * x.size(1), x.size(2)}), w_ih.t());
  if (bias_f32) out.add_(*bias_f32);
  return out.view({x.size(0), x.size(1), w_ih.size(0)});
}

// The input's and w_ih's gradients of a 16-bit layer from the 16-bit copy of
// the input projection's gradient; the bias gradient from the fp32 one.
InputGrads input_projection_backward_half(const Tensor& d_xproj, const Tensor& d_xproj_half,
                                          const Tensor& x, const Tensor& w_ih, bool grad_input,
                                          const StepBlocks& h_prev = {}) {
  const int64_t rows = d_xproj.size(0) * d_xproj.size(1);
  const Tensor d_rows = d_xproj_half.view({rows, d_xproj.size(2)});
  InputGrads grads;
  grads.input = grad_input ? mm_f32(d_rows, w_ih).view(x.sizes()) : at::empty({0}, x.options());
  grads.w_ih = mm_f32(d_rows.t(), x.reshape({rows, x.size(2)}));
  if (!h_prev.empty()) grads.w_hh = mm_f32(d_rows.t(), rows_of(joined(h_prev, 0)));
  grads.bias = d_xproj.view({rows, d_xproj.size(2)}).sum(0);
  return grads;
}

// ------------------------------------------------------ persistent path
// The whole-sequence loops run when the caller asks for them (the
// `persistent` op argument, decided in fusedrnn/ops.py) and the call is one
// they cover (no projection): on CPU the persistent loops of cpu/persistent.h,
// which also compute the input projection, on CUDA the kernels of
// cuda/persistent.cuh and cuda/persistent_backward.cuh (H within the on-chip
// limit; fp32/fp64 GEMMs; on CPU tensors in the SIMT build). Otherwise the
// step loop runs.

#ifdef FUSEDRNN_CUDA_KERNELS
template <typename T>
bool persistent_kernel(const LstmSequence<T>& seq) { return cuda::persistent::lstm_forward<T>(seq); }
template <typename T>
bool persistent_kernel(const GruSequence<T>& seq) { return cuda::persistent::gru_forward<T>(seq); }
template <typename T>
bool persistent_kernel(const LstmBackwardSequence<T>& seq) {
  return cuda::persistent::lstm_backward<T>(seq);
}
template <typename T>
bool persistent_kernel(const GruBackwardSequence<T>& seq) {
  return cuda::persistent::gru_backward<T>(seq);
}
#endif

std::atomic<int64_t> g_persistent_fallbacks{0};

// Runs the persistent CUDA kernel for `seq` when `on` is where this build's
// CUDA kernels run (CUDA tensors; CPU tensors in the SIMT build); false, with
// a one-time warning if it cannot take this size, so the caller falls back
// to the step loop. Empty sizes always go to the step loop, which handles
// them without a launch.
template <typename Seq>
bool run_persistent_cuda(const Seq& seq, const Tensor& on, const char* cell) {
  if (seq.steps == 0 || seq.batch == 0 || seq.hidden == 0) return false;
  const bool on_kernel_device = kCpuKernels ? on.is_cuda() : on.is_cpu();
  if (!on_kernel_device) return false;
#ifdef FUSEDRNN_CUDA_KERNELS
  if (persistent_kernel(seq)) return true;
  g_persistent_fallbacks.fetch_add(1, std::memory_order_relaxed);
  TORCH_WARN_ONCE("fusedrnn: the persistent ", cell, " kernel cannot run this size on this GPU ",
                  "(hidden ", seq.hidden, ", batch ", seq.batch, "); using the standard kernels");
#endif
  return false;
}

// Whether a layer runs the persistent CPU loops: asked for, on the CPU, and a
// size and dtype they take. The backward follows the forward's choice.
template <typename T>
bool use_persistent_cpu(bool persistent, const Tensor& on, int64_t batch, int64_t hidden) {
  if constexpr (kCpuKernels)
    return persistent && on.is_cpu() && cpu::persistent_fits<T>(batch, hidden);
  else
    return false;
}

// The CPU loops' view of the input projection, x @ w_ih^T + bias.
template <typename T>
cpu::InputProjection<T> input_projection_of(const Tensor& x, const Tensor& w_ih,
                                            const std::optional<Tensor>& bias) {
  return {.input_size = x.size(2), .x = x.data_ptr<T>(), .w_ih = w_ih.data_ptr<T>(),
          .bias = data_or_null<T>(bias)};
}


// -------------------------------------------------------- LSTM checks

struct LstmSizes {
  int64_t steps, batch, input_size, hidden, h_size;
  bool projected;
};

LstmSizes check_lstm(const OpArgs& args, const Tensor& input, const Tensor& w_ih,
                     const Tensor& w_hh, const std::optional<Tensor>& w_hr) {
  args.sequence(input, "input");
  args.supported_dtype(input, "input");
  const auto dtype = input.scalar_type();
  LstmSizes s;
  s.steps = input.size(0);
  s.batch = input.size(1);
  s.input_size = input.size(2);
  if (w_ih.dim() != 2 || w_ih.size(0) % 4 != 0)
    args.fail("w_ih must be a (4H, I) matrix, got shape " + c10::str(w_ih.sizes()));
  s.hidden = w_ih.size(0) / 4;
  s.projected = w_hr.has_value();
  s.h_size = s.projected ? w_hr->size(0) : s.hidden;
  args.tensor(w_ih, "w_ih", {4 * s.hidden, s.input_size}, dtype);
  args.tensor(w_hh, "w_hh", {4 * s.hidden, s.h_size}, dtype);
  if (s.projected) args.tensor(*w_hr, "w_hr", {s.h_size, s.hidden}, dtype);
  return s;
}

}  // namespace

// ------------------------------------------- shared with norm_recurrence.cpp
// (declared in step_loop.h)

StepBlocks previous_state_blocks(const Tensor& seq, const Tensor& init,
                                 const std::optional<Tensor>& lengths, bool reverse) {
  const int64_t steps = seq.size(0);
  if (steps == 0) return {seq};
  const Tensor first = init.unsqueeze(0);
  // A streaming step: no empty block to join. Contiguous, as a join would be
  // (the step loops read it through raw pointers).
  if (steps == 1) return {first.contiguous()};
  const Tensor rest = seq.narrow(0, reverse ? 1 : 0, steps - 1);
  if (!reverse) return {first, rest};
  if (!lengths) return {rest, first};
  // A reversed sequence starts at its own last step, lengths[b] - 1.
  auto t = at::arange(steps, lengths->options()).view({steps, 1});
  auto starts = (t >= (*lengths - 1).view({1, -1})).unsqueeze(-1);
  return {at::where(starts, first, at::cat({rest, first}))};
}

Tensor previous_states(const Tensor& seq, const Tensor& init,
                       const std::optional<Tensor>& lengths, bool reverse) {
  return joined(previous_state_blocks(seq, init, lengths, reverse), 0);
}

namespace {

// a^T @ b for a (T, B, M) and each b (T, B, N_i) of `bs`, over the many rows
// (steps x batch): the weight gradients, which may share a (LSTM's W_ih and
// W_hh). a comes as blocks of its columns, each (T, B, M_j) with unit column
// stride. On cpu::gemm, one GEMM (b_1 .. b_n)^T a: the wide a is read and
// packed once, only the narrower b's are transposed, straight from their
// step blocks. The products are then transposed views into its result:
// owned() copies them out, which a caller does once it has freed what it
// can (a), so that the copies and a are never live at once. `width` is the
// b's total width, `a_width` a's.
std::vector<Tensor> cpu_gemm_tn_over_steps(const std::vector<Tensor>& a,
                                           const std::vector<StepBlocks>& bs, int64_t rows,
                                           int64_t width, int64_t a_width) {
  Tensor stacked = at::empty({width, rows}, a.front().options());
  int64_t offset = 0;
  for (const StepBlocks& b : bs) {
    const int64_t n = b.front().size(2);
    int64_t row = 0;
    for (const Tensor& block : b) {
      const Tensor block_rows = rows_of(block);
      stacked.narrow(0, offset, n).narrow(1, row, block_rows.size(0)).copy_(block_rows.t());
      row += block_rows.size(0);
    }
    offset += n;
  }
  Tensor product = at::empty({width, a_width}, stacked.options());
  int64_t column = 0;
  for (const Tensor& block : a) {
    const Tensor block_rows = rows_of(block);
    TORCH_INTERNAL_ASSERT(block_rows.stride(1) == 1);
    if constexpr (kCpuKernels)
      cpu::gemm(width, block_rows.size(1), rows, stacked.data_ptr<float>(), rows,
                block_rows.data_ptr<float>(), block_rows.stride(0), /*b_transposed=*/false,
                product.data_ptr<float>() + column, a_width, /*accumulate=*/false);
    column += block_rows.size(1);
  }
  std::vector<Tensor> products;
  offset = 0;
  for (const StepBlocks& b : bs) {
    const int64_t n = b.front().size(2);
    products.push_back(product.narrow(0, offset, n).t());
    offset += n;
  }
  return products;
}

}  // namespace

// A small GEMM runs on ATen, whose GEMM reads the transposed a in place:
// there cpu::gemm's transposed copies would add more to the peak memory than
// it saves in time. One product per block of a (no joined copy of a), then
// stacked: weight-sized.
std::vector<Tensor> gemm_tn_over_steps(const std::vector<Tensor>& a,
                                       const std::vector<StepBlocks>& bs) {
  const int64_t rows = a.front().size(0) * a.front().size(1);
  int64_t width = 0, a_width = 0;
  for (const StepBlocks& b : bs) width += b.front().size(2);
  for (const Tensor& block : a) a_width += block.size(2);
  if (use_cpu_gemm(rows_of(a.front())) && rows * width * a_width >= kMinTnGemmFmas)
    return cpu_gemm_tn_over_steps(a, bs, rows, width, a_width);
  std::vector<Tensor> products;
  for (const StepBlocks& b : bs) {
    const Tensor b_rows = rows_of(joined(b, 0));
    std::vector<Tensor> parts;
    for (const Tensor& block : a) parts.push_back(rows_of(block).t().mm(b_rows));
    products.push_back(parts.size() == 1 ? parts.front() : at::cat(parts, 0));
  }
  return products;
}

// gemm_tn_over_steps' products as tensors of their own: a view into their
// buffer, even a contiguous one (a bias's column), would keep it all alive.
std::vector<Tensor> owned(std::vector<Tensor> products) {
  for (Tensor& p : products)
    if (!p.is_contiguous() || p.nbytes() != p.storage().nbytes())
      p = p.clone(at::MemoryFormat::Contiguous);
  return products;
}

Toolkit check_toolkit(const OpArgs& args, const ToolkitShape& s, at::ScalarType dtype,
                      const std::optional<Tensor>& rec_mask, const std::optional<Tensor>& zone_h,
                      const std::optional<Tensor>& zone_c, double cell_clip, double grad_clip) {
  auto check_limit = [&](double limit, const char* name) {
    if (!(limit >= 0) || std::isinf(limit))
      args.fail(std::string(name) + " must be finite and >= 0 (0: off), got " + c10::str(limit));
  };
  check_limit(cell_clip, "cell_clip");
  check_limit(grad_clip, "grad_clip");
  if (rec_mask) args.tensor(*rec_mask, "recurrent_mask", {s.batch, s.h_size}, dtype);
  if (zone_h) args.tensor(*zone_h, "zoneout_h", {s.steps, s.batch, s.h_size}, dtype);
  if (zone_c) args.tensor(*zone_c, "zoneout_c", {s.steps, s.batch, s.hidden}, dtype);
  if (s.projected && (zone_h || zone_c))
    args.fail("zoneout with a projection (w_hr) is not implemented");
  const auto compute = compute_dtype_for(dtype);
  return {to_compute(rec_mask, compute), to_compute(zone_h, compute), to_compute(zone_c, compute),
          cell_clip, grad_clip};
}

StepBlocks recurrent_operands(StepBlocks h_prev, const Toolkit& toolkit) {
  if (toolkit.rec_mask)
    for (Tensor& block : h_prev) block = block * *toolkit.rec_mask;
  return h_prev;
}

Tensor recurrent_weight_grad(const std::vector<Tensor>& d_hh, const StepBlocks& h_prev,
                             const Toolkit& toolkit) {
  return owned(gemm_tn_over_steps(d_hh, {recurrent_operands(h_prev, toolkit)})).front();
}

// ============================================================== LSTM

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& input, const Tensor& w_ih, const std::optional<Tensor>& bias,
    const Tensor& w_hh, const std::optional<Tensor>& w_hr, const Tensor& h0, const Tensor& c0,
    const std::optional<Tensor>& lengths_in, bool reverse, bool save_for_backward,
    bool persistent_in, const std::optional<Tensor>& recurrent_mask,
    const std::optional<Tensor>& zoneout_h, const std::optional<Tensor>& zoneout_c,
    double cell_clip, double grad_clip) {
  const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  const OpArgs args("lstm_forward", input);
  const LstmSizes s = check_lstm(args, input, w_ih, w_hh, w_hr);
  const auto out_type = input.scalar_type();
  if (bias) args.tensor(*bias, "bias", {4 * s.hidden}, out_type);
  args.tensor(h0, "h0", {s.batch, s.h_size}, out_type);
  args.tensor(c0, "c0", {s.batch, s.hidden}, out_type);
  const auto lengths = args.lengths(lengths_in, s.batch);
  const Toolkit toolkit =
      check_toolkit(args, {s.steps, s.batch, s.hidden, s.h_size, s.projected}, out_type,
                    recurrent_mask, zoneout_h, zoneout_c, cell_clip, grad_clip);
  const bool persistent = persistent_in && !toolkit.any();
  c10::OptionalDeviceGuard guard(input.device());

  const auto compute_type = compute_dtype_for(out_type);
  const Tensor x_c = to_compute(input, compute_type), w_ih_c = to_compute(w_ih, compute_type);
  const auto bias_c = to_compute(bias, compute_type);
  const Tensor w_hh_c = to_compute(w_hh, compute_type);
  const auto w_hr_c = to_compute(w_hr, compute_type);
  const auto opts = x_c.options();
  const int64_t batch = s.batch, hidden = s.hidden, h_size = s.h_size;

  Tensor output = at::empty({s.steps, batch, h_size}, opts);
  // Inference saves nothing: the kernels skip null gates/cells.
  const int64_t saved_steps = save_for_backward ? s.steps : 0;
  Tensor gates = at::empty({saved_steps, batch, 4 * hidden}, opts);
  Tensor cells = at::empty({saved_steps, batch, hidden}, opts);
  Tensor h_state = h0.to(compute_type).clone(at::MemoryFormat::Contiguous);
  Tensor c = c0.to(compute_type).clone(at::MemoryFormat::Contiguous);

  AT_DISPATCH_FLOATING_TYPES(compute_type, "fusedrnn::lstm_forward", [&] {
    const int64_t* lens = data_or_null<int64_t>(lengths);
    const Tensor h0_c = to_compute(h0, compute_type);
    LstmSequence<scalar_t> seq{
        .steps = s.steps, .batch = batch, .hidden = hidden, .reverse = reverse,
        .xproj = nullptr, .w_hh = w_hh_c.data_ptr<scalar_t>(), .h0 = h0_c.data_ptr<scalar_t>(),
        .c0 = c.data_ptr<scalar_t>(), .output = output.data_ptr<scalar_t>(),
        .h_n = h_state.data_ptr<scalar_t>(), .c_n = c.data_ptr<scalar_t>(),
        .gates = saved_at<scalar_t>(gates, 0), .cells = saved_at<scalar_t>(cells, 0),
        .lengths = lens};
    if constexpr (kCpuKernels) {
      if (!s.projected && use_persistent_cpu<scalar_t>(persistent, input, batch, hidden)) {
        cpu::persistent_lstm_forward<scalar_t>(
            seq, input_projection_of<scalar_t>(x_c, w_ih_c, bias_c));
        return;
      }
    }
    // 16-bit GEMMs; the toolkit's kernels take fp32 operands.
    const bool half = half_gemms(out_type, input, s.projected) && !toolkit.any();
    const Tensor xproj = half ? input_projection_half(input, w_ih, bias_c)
                              : input_projection(x_c, w_ih_c, bias_c);
    seq.xproj = xproj.data_ptr<scalar_t>();
    if (persistent && !s.projected && run_persistent_cuda(seq, xproj, "LSTM")) return;
    // The 16-bit copy of h the next step's GEMM reads (its first value is h0 itself).
    Tensor h_half = half ? h0.clone(at::MemoryFormat::Contiguous) : Tensor();
    Tensor hh = at::empty({batch, 4 * hidden}, opts);
    Tensor h_raw = s.projected ? at::empty({batch, hidden}, opts) : Tensor();
    Tensor h_proj = s.projected ? at::empty({batch, h_size}, opts) : Tensor();
    const auto kernels = kernels_for<scalar_t>(xproj);
    const StepProduct recurrent_product(half ? w_hh : w_hh_c, s.steps, batch);
    std::optional<StepProduct> projection;
    if (s.projected) projection.emplace(*w_hr_c, s.steps, batch);
    // Recurrent dropout: the product takes h * mask, which the step kernels keep
    // up to date in h_masked next to h_state.
    Tensor h_masked = toolkit.rec_mask ? h_state * *toolkit.rec_mask : Tensor();
    const Tensor& operand = toolkit.rec_mask ? h_masked : h_state;
    scalar_t* const rec_mask = data_or_null<scalar_t>(toolkit.rec_mask);
    scalar_t* const h_masked_data = toolkit.rec_mask ? h_masked.data_ptr<scalar_t>() : nullptr;
    for (int64_t step = 0; step < s.steps; ++step) {
      const int64_t t = step_time(step, s.steps, reverse);
      if (half)
        mm_f32_out(hh, h_half, recurrent_product.transposed());
      else
        recurrent_product(hh, operand);
      scalar_t* out_t = at_step<scalar_t>(output, t);
      kernels.lstm_forward({.batch = batch, .hidden = hidden,
                            .xproj = at_step<scalar_t>(xproj, t), .hh = hh.data_ptr<scalar_t>(),
                            .c = c.data_ptr<scalar_t>(), .gates = saved_at<scalar_t>(gates, t),
                            .cells = saved_at<scalar_t>(cells, t),
                            .h_out = s.projected ? h_raw.data_ptr<scalar_t>() : out_t,
                            .h_state = s.projected ? nullptr : h_state.data_ptr<scalar_t>(),
                            .lengths = lens, .t = t,
                            .cell_clip = static_cast<scalar_t>(toolkit.cell_clip),
                            .zone_h = step_or_null<scalar_t>(toolkit.zone_h, t),
                            .zone_c = step_or_null<scalar_t>(toolkit.zone_c, t),
                            .rec_mask = s.projected ? nullptr : rec_mask,
                            .h_masked = s.projected ? nullptr : h_masked_data,
                            .h_half = half ? half_bits(h_half) : nullptr,
                            .half_type = half_type_of(out_type)});
      if (s.projected) {
        (*projection)(h_proj, h_raw);
        kernels.projected_commit({.batch = batch, .h_size = h_size,
                                  .h_new = h_proj.data_ptr<scalar_t>(), .out = out_t,
                                  .h_state = h_state.data_ptr<scalar_t>(), .lengths = lens,
                                  .t = t, .rec_mask = rec_mask, .h_masked = h_masked_data});
      }
    }
  });
  return {output.to(out_type), h_state.to(out_type), c.to(out_type), gates, cells};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const Tensor& grad_output_in, const Tensor& grad_h_n, const Tensor& grad_c_n,
    const Tensor& input, const Tensor& w_ih, const Tensor& w_hh,
    const std::optional<Tensor>& w_hr, const Tensor& h0, const Tensor& c0, const Tensor& output,
    const Tensor& gates, const Tensor& cells, const std::optional<Tensor>& lengths_in,
    bool reverse, bool grad_input, bool persistent_in,
    const std::optional<Tensor>& recurrent_mask, const std::optional<Tensor>& zoneout_h,
    const std::optional<Tensor>& zoneout_c, double cell_clip, double grad_clip) {
  const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  const OpArgs args("lstm_backward", input);
  const LstmSizes s = check_lstm(args, input, w_ih, w_hh, w_hr);
  const auto out_type = input.scalar_type();
  const auto compute_type = compute_dtype_for(out_type);
  const int64_t steps = s.steps, batch = s.batch, hidden = s.hidden, h_size = s.h_size;
  const Toolkit toolkit =
      check_toolkit(args, {steps, batch, hidden, h_size, s.projected}, out_type, recurrent_mask,
                    zoneout_h, zoneout_c, cell_clip, grad_clip);
  const bool persistent = persistent_in && !toolkit.any();
  args.tensor(grad_output_in, "grad_output", {steps, batch, h_size}, out_type);
  args.tensor(grad_h_n, "grad_h_n", {batch, h_size}, out_type);
  args.tensor(grad_c_n, "grad_c_n", {batch, hidden}, out_type);
  args.tensor(h0, "h0", {batch, h_size}, out_type);
  args.tensor(c0, "c0", {batch, hidden}, out_type);
  args.tensor(output, "output", {steps, batch, h_size}, out_type);
  args.tensor(gates, "gates", {steps, batch, 4 * hidden}, compute_type);
  args.tensor(cells, "cells", {steps, batch, hidden}, compute_type);
  const auto lengths = args.lengths(lengths_in, batch);
  c10::OptionalDeviceGuard guard(input.device());

  const Tensor grad_output = to_compute(grad_output_in, compute_type);
  const Tensor w_hh_c = to_compute(w_hh, compute_type);
  const auto w_hr_c = to_compute(w_hr, compute_type);
  const Tensor gates_c = gates.contiguous(), cells_c = cells.contiguous();
  const auto opts = gates_c.options();

  Tensor d_gates = at::empty({steps, batch, 4 * hidden}, opts);
  Tensor dh_state = grad_h_n.to(compute_type).clone(at::MemoryFormat::Contiguous);
  Tensor dc = grad_c_n.to(compute_type).clone(at::MemoryFormat::Contiguous);
  Tensor dh_total;  // (T, B, P): every step's dh, for the step loop and w_hr's gradient
  const bool half = half_gemms(out_type, input, s.projected) && !toolkit.any();
  // The 16-bit copy of d_gates the GEMMs read (dh, and the weights' and input's gradients).
  Tensor d_gates_half = half ? at::empty({steps, batch, 4 * hidden}, input.options()) : Tensor();
  const Tensor w_hh_half = half ? w_hh.contiguous() : Tensor();

  AT_DISPATCH_FLOATING_TYPES(compute_type, "fusedrnn::lstm_backward", [&] {
    const int64_t* lens = data_or_null<int64_t>(lengths);
    const Tensor c0_c = to_compute(c0, compute_type);
    const LstmBackwardSequence<scalar_t> seq{
        .steps = steps, .batch = batch, .hidden = hidden, .reverse = reverse,
        .w_hh = w_hh_c.data_ptr<scalar_t>(), .c0 = c0_c.data_ptr<scalar_t>(),
        .grad_out = grad_output.data_ptr<scalar_t>(), .gates = gates_c.data_ptr<scalar_t>(),
        .cells = cells_c.data_ptr<scalar_t>(), .d_gates = d_gates.data_ptr<scalar_t>(),
        .dh = dh_state.data_ptr<scalar_t>(), .dc = dc.data_ptr<scalar_t>(), .lengths = lens};
    if constexpr (kCpuKernels) {
      if (!s.projected && use_persistent_cpu<scalar_t>(persistent, input, batch, hidden)) {
        cpu::persistent_lstm_backward<scalar_t>(seq);
        return;
      }
    }
    // The persistent CUDA backward computes in fp32 with no 16-bit GEMM operands.
    if (persistent && !s.projected && !half && run_persistent_cuda(seq, gates_c, "LSTM backward"))
      return;
    const auto kernels = kernels_for<scalar_t>(gates_c);
    const Tensor c_prev = previous_states(cells_c, c0.to(compute_type), lengths, reverse);
    if (!s.projected && kernels.lstm_backward_fused != nullptr && !toolkit.any()) {
      // One kernel and one GEMM per step (GradFlow, params.h): dh_state
      // carries, dh_gemm receives each step's d_gates @ W_hh. The steps' GEMM
      // operands are viewed once, before the loop.
      Tensor dh_gemm = at::zeros_like(dh_state);
      const std::vector<Tensor> d_gates_steps = (half ? d_gates_half : d_gates).unbind(0);
      for (int64_t step = steps - 1; step >= 0; --step) {
        const int64_t t = step_time(step, steps, reverse);
        kernels.lstm_backward_fused(
            {.batch = batch, .hidden = hidden, .gates = at_step<scalar_t>(gates_c, t),
             .cells = at_step<scalar_t>(cells_c, t), .c_prev = at_step<scalar_t>(c_prev, t),
             .dh = nullptr, .dc = dc.data_ptr<scalar_t>(),
             .d_gates = at_step<scalar_t>(d_gates, t), .lengths = lens, .t = t,
             .d_gates_half = half ? half_bits(d_gates_half) + t * batch * 4 * hidden : nullptr,
             .half_type = half_type_of(out_type)},
            {.grad_out = at_step<scalar_t>(grad_output, t),
             .dh_gemm = dh_gemm.data_ptr<scalar_t>(), .dh_carry = dh_state.data_ptr<scalar_t>()});
        if (half)
          mm_f32_out(dh_gemm, d_gates_steps[t], w_hh_half);
        else
          at::mm_out(dh_gemm, d_gates_steps[t], w_hh_c);
      }
      dh_state.add_(dh_gemm);  // the gradient reaching h0
      return;
    }
    // Composed steps: the CPU kernels, and a projected layer's on CUDA.
    dh_total = at::empty({steps, batch, h_size}, opts);
    Tensor dh_raw = s.projected ? at::empty({batch, hidden}, opts) : Tensor();
    Tensor rec = toolkit.any() ? at::empty({batch, h_size}, opts) : Tensor();
    for (int64_t step = steps - 1; step >= 0; --step) {
      const int64_t t = step_time(step, steps, reverse);
      const Tensor dh_total_t = dh_total.select(0, t), d_gates_t = d_gates.select(0, t);
      kernels.grad_h_accumulate({.batch = batch, .h_size = h_size,
                                 .grad_out = at_step<scalar_t>(grad_output, t),
                                 .dh_state = dh_state.data_ptr<scalar_t>(),
                                 .dh_total = dh_total_t.data_ptr<scalar_t>(), .lengths = lens,
                                 .t = t});
      if (s.projected) at::mm_out(dh_raw, dh_total_t, *w_hr_c);
      kernels.lstm_backward({.batch = batch, .hidden = hidden,
                             .gates = at_step<scalar_t>(gates_c, t),
                             .cells = at_step<scalar_t>(cells_c, t),
                             .c_prev = at_step<scalar_t>(c_prev, t),
                             .dh = (s.projected ? dh_raw : dh_total_t).data_ptr<scalar_t>(),
                             .dc = dc.data_ptr<scalar_t>(),
                             .d_gates = d_gates_t.data_ptr<scalar_t>(), .lengths = lens,
                             .t = t, .cell_clip = static_cast<scalar_t>(toolkit.cell_clip),
                             .grad_clip = static_cast<scalar_t>(toolkit.grad_clip),
                             .zone_h = step_or_null<scalar_t>(toolkit.zone_h, t),
                             .zone_c = step_or_null<scalar_t>(toolkit.zone_c, t)});
      if (toolkit.any()) {
        // dh_state = clip(direct paths + mask * (dG @ W_hh)): params.h, GradHCombine.
        kernels.grad_h_carry({.batch = batch, .h_size = h_size, .grad_out = nullptr,
                              .dh_state = dh_state.data_ptr<scalar_t>(),
                              .dh_total = dh_total_t.data_ptr<scalar_t>(), .lengths = lens,
                              .t = t, .zone = step_or_null<scalar_t>(toolkit.zone_h, t)});
        at::mm_out(rec, d_gates_t, w_hh_c);
        kernels.grad_h_combine({.batch = batch, .h_size = h_size,
                                .rec = rec.data_ptr<scalar_t>(),
                                .rec_mask = data_or_null<scalar_t>(toolkit.rec_mask),
                                .dh_state = dh_state.data_ptr<scalar_t>(),
                                .grad_clip = static_cast<scalar_t>(toolkit.grad_clip)});
      } else if (lens) {
        kernels.grad_h_carry({.batch = batch, .h_size = h_size, .grad_out = nullptr,
                              .dh_state = dh_state.data_ptr<scalar_t>(),
                              .dh_total = dh_total_t.data_ptr<scalar_t>(), .lengths = lens,
                              .t = t});
        dh_state.addmm_(d_gates_t, w_hh_c);
      } else {
        at::mm_out(dh_state, d_gates_t, w_hh_c);
      }
    }
  });

  // 16-bit layers: h_prev in its own type, exactly the GEMM operands of the forward.
  const StepBlocks h_prev =
      half ? previous_state_blocks(output, h0, lengths, reverse)
           : previous_state_blocks(output.to(compute_type), h0.to(compute_type), lengths, reverse);
  Tensor grad_w_hr = at::empty({0}, input.options());
  if (s.projected) {
    // Unprojected hidden state o * tanh(c); zero where inactive (o saved as 0).
    const Tensor h_raw_all = gates_c.narrow(2, 3 * hidden, hidden) * cells_c.tanh();
    grad_w_hr = dh_total.view({steps * batch, h_size})
                    .t()
                    .mm(h_raw_all.view({steps * batch, hidden}))
                    .to(out_type);
  }
  const InputGrads in =
      half ? input_projection_backward_half(d_gates, d_gates_half, input, w_ih, grad_input,
                                            h_prev)
           : input_projection_backward(std::move(d_gates), to_compute(input, compute_type),
                                       to_compute(w_ih, compute_type), grad_input,
                                       BiasGrad::kGemmRow, recurrent_operands(h_prev, toolkit));
  return {in.input.to(out_type), in.w_ih.to(out_type), in.bias.to(out_type),
          in.w_hh.to(out_type), grad_w_hr, dh_state.to(out_type), dc.to(out_type)};
}

// =============================================================== GRU

namespace {

struct GruSizes {
  int64_t steps, batch, input_size, hidden;
};

GruSizes check_gru(const OpArgs& args, const Tensor& input, const Tensor& w_ih,
                   const Tensor& w_hh) {
  args.sequence(input, "input");
  args.supported_dtype(input, "input");
  const auto dtype = input.scalar_type();
  GruSizes s;
  s.steps = input.size(0);
  s.batch = input.size(1);
  s.input_size = input.size(2);
  if (w_ih.dim() != 2 || w_ih.size(0) % 3 != 0)
    args.fail("w_ih must be a (3H, I) matrix, got shape " + c10::str(w_ih.sizes()));
  s.hidden = w_ih.size(0) / 3;
  args.tensor(w_ih, "w_ih", {3 * s.hidden, s.input_size}, dtype);
  args.tensor(w_hh, "w_hh", {3 * s.hidden, s.hidden}, dtype);
  return s;
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> gru_forward(
    const Tensor& input, const Tensor& w_ih, const std::optional<Tensor>& b_ih,
    const Tensor& w_hh, const std::optional<Tensor>& b_hh, const Tensor& h0,
    const std::optional<Tensor>& lengths_in, bool reverse, bool save_for_backward,
    bool persistent_in, const std::optional<Tensor>& recurrent_mask,
    const std::optional<Tensor>& zoneout_h, double grad_clip) {
  const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  const OpArgs args("gru_forward", input);
  const GruSizes s = check_gru(args, input, w_ih, w_hh);
  const auto out_type = input.scalar_type();
  if (b_ih) args.tensor(*b_ih, "b_ih", {3 * s.hidden}, out_type);
  if (b_hh) args.tensor(*b_hh, "b_hh", {3 * s.hidden}, out_type);
  args.tensor(h0, "h0", {s.batch, s.hidden}, out_type);
  const auto lengths = args.lengths(lengths_in, s.batch);
  const Toolkit toolkit =
      check_toolkit(args, {s.steps, s.batch, s.hidden, s.hidden, false}, out_type,
                    recurrent_mask, zoneout_h, std::nullopt, 0.0, grad_clip);
  const bool persistent = persistent_in && !toolkit.any();
  c10::OptionalDeviceGuard guard(input.device());

  const auto compute_type = compute_dtype_for(out_type);
  const Tensor x_c = to_compute(input, compute_type), w_ih_c = to_compute(w_ih, compute_type);
  const auto b_ih_c = to_compute(b_ih, compute_type);
  const Tensor w_hh_c = to_compute(w_hh, compute_type);
  const auto b_hh_c = to_compute(b_hh, compute_type);
  const auto opts = x_c.options();
  const int64_t batch = s.batch, hidden = s.hidden;

  Tensor output = at::empty({s.steps, batch, hidden}, opts);
  Tensor gates = at::empty({save_for_backward ? s.steps : 0, batch, 4 * hidden}, opts);
  Tensor h_state = h0.to(compute_type).clone(at::MemoryFormat::Contiguous);

  AT_DISPATCH_FLOATING_TYPES(compute_type, "fusedrnn::gru_forward", [&] {
    const int64_t* lens = data_or_null<int64_t>(lengths);
    const Tensor h0_c = to_compute(h0, compute_type);
    GruSequence<scalar_t> seq{
        .steps = s.steps, .batch = batch, .hidden = hidden, .reverse = reverse,
        .xproj = nullptr, .w_hh = w_hh_c.data_ptr<scalar_t>(),
        .b_hh = data_or_null<scalar_t>(b_hh_c), .h0 = h0_c.data_ptr<scalar_t>(),
        .output = output.data_ptr<scalar_t>(), .h_n = h_state.data_ptr<scalar_t>(),
        .gates = saved_at<scalar_t>(gates, 0), .lengths = lens};
    if constexpr (kCpuKernels) {
      if (use_persistent_cpu<scalar_t>(persistent, input, batch, hidden)) {
        cpu::persistent_gru_forward<scalar_t>(
            seq, input_projection_of<scalar_t>(x_c, w_ih_c, b_ih_c));
        return;
      }
    }
    const bool half = half_gemms(out_type, input, false) && !toolkit.any();
    const Tensor xproj = half ? input_projection_half(input, w_ih, b_ih_c)
                              : input_projection(x_c, w_ih_c, b_ih_c);
    seq.xproj = xproj.data_ptr<scalar_t>();
    if (persistent && run_persistent_cuda(seq, xproj, "GRU")) return;
    Tensor hh = at::empty({batch, 3 * hidden}, opts);
    // The 16-bit copy of h the next step's GEMM reads (its first value is h0 itself).
    Tensor h_half = half ? h0.clone(at::MemoryFormat::Contiguous) : Tensor();
    const auto kernels = kernels_for<scalar_t>(xproj);
    const StepProduct recurrent_product(half ? w_hh : w_hh_c, s.steps, batch);
    // Recurrent dropout: as in lstm_forward.
    Tensor h_masked = toolkit.rec_mask ? h_state * *toolkit.rec_mask : Tensor();
    const Tensor& operand = toolkit.rec_mask ? h_masked : h_state;
    for (int64_t step = 0; step < s.steps; ++step) {
      const int64_t t = step_time(step, s.steps, reverse);
      if (half)
        mm_f32_out(hh, h_half, recurrent_product.transposed());  // b_hh is added by the kernel
      else
        recurrent_product(hh, operand, b_hh_c);
      kernels.gru_forward({.batch = batch, .hidden = hidden,
                           .xproj = at_step<scalar_t>(xproj, t), .hh = hh.data_ptr<scalar_t>(),
                           .h_state = h_state.data_ptr<scalar_t>(),
                           .gates = saved_at<scalar_t>(gates, t),
                           .h_out = at_step<scalar_t>(output, t), .lengths = lens, .t = t,
                           .zone_h = step_or_null<scalar_t>(toolkit.zone_h, t),
                           .rec_mask = data_or_null<scalar_t>(toolkit.rec_mask),
                           .h_masked = toolkit.rec_mask ? h_masked.data_ptr<scalar_t>() : nullptr,
                           .b_hh = half ? data_or_null<scalar_t>(b_hh_c) : nullptr,
                           .h_half = half ? half_bits(h_half) : nullptr,
                           .half_type = half_type_of(out_type)});
    }
  });
  return {output.to(out_type), h_state.to(out_type), gates};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward(
    const Tensor& grad_output_in, const Tensor& grad_h_n, const Tensor& input, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& h0, const Tensor& output, const Tensor& gates,
    const std::optional<Tensor>& lengths_in, bool reverse, bool grad_input, bool persistent_in,
    const std::optional<Tensor>& recurrent_mask, const std::optional<Tensor>& zoneout_h,
    double grad_clip) {
  const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  const OpArgs args("gru_backward", input);
  const GruSizes s = check_gru(args, input, w_ih, w_hh);
  const auto out_type = input.scalar_type();
  const auto compute_type = compute_dtype_for(out_type);
  const int64_t steps = s.steps, batch = s.batch, hidden = s.hidden;
  const Toolkit toolkit =
      check_toolkit(args, {steps, batch, hidden, hidden, false}, out_type, recurrent_mask,
                    zoneout_h, std::nullopt, 0.0, grad_clip);
  const bool persistent = persistent_in && !toolkit.any();
  args.tensor(grad_output_in, "grad_output", {steps, batch, hidden}, out_type);
  args.tensor(grad_h_n, "grad_h_n", {batch, hidden}, out_type);
  args.tensor(h0, "h0", {batch, hidden}, out_type);
  args.tensor(output, "output", {steps, batch, hidden}, out_type);
  args.tensor(gates, "gates", {steps, batch, 4 * hidden}, compute_type);
  const auto lengths = args.lengths(lengths_in, batch);
  c10::OptionalDeviceGuard guard(input.device());

  const Tensor grad_output = to_compute(grad_output_in, compute_type);
  const Tensor w_hh_c = to_compute(w_hh, compute_type);
  const Tensor gates_c = gates.contiguous();
  const auto opts = gates_c.options();

  Tensor d_xproj = at::empty({steps, batch, 3 * hidden}, opts);
  // The recurrent product's gradient (T, B, 3H). The persistent CPU loop
  // stores only its n part (T, B, H): its r and z parts are d_xproj's.
  Tensor d_hh;
  Tensor dh_state = grad_h_n.to(compute_type).clone(at::MemoryFormat::Contiguous);
  const bool half = half_gemms(out_type, input, false) && !toolkit.any();
  // The 16-bit copies of the gradients the GEMMs read.
  Tensor d_xproj_half = half ? at::empty({steps, batch, 3 * hidden}, input.options()) : Tensor();
  Tensor d_hh_half = half ? at::empty({steps, batch, 3 * hidden}, input.options()) : Tensor();
  const Tensor w_hh_half = half ? w_hh.contiguous() : Tensor();

  // h0 and the output in the compute type: the loops' inputs and W_hh's GEMM operand.
  const Tensor h0_c = to_compute(h0, compute_type);
  Tensor output_c = to_compute(output, compute_type);
  AT_DISPATCH_FLOATING_TYPES(compute_type, "fusedrnn::gru_backward", [&] {
    const int64_t* lens = data_or_null<int64_t>(lengths);
    // The persistent paths store only d_hh's n part (T, B, H): its r and z parts
    // are d_xproj's. The step loops need all of it (T, B, 3H).
    bool cpu_loop = false;
    if constexpr (kCpuKernels)
      cpu_loop = use_persistent_cpu<scalar_t>(persistent, input, batch, hidden);
    const bool cuda_kernel = persistent && !half && !cpu_loop;  // fp32 GEMMs only
    d_hh = at::empty({steps, batch, cpu_loop || cuda_kernel ? hidden : 3 * hidden}, opts);
    const GruBackwardSequence<scalar_t> seq{
        .steps = steps, .batch = batch, .hidden = hidden, .reverse = reverse,
        .w_hh = w_hh_c.data_ptr<scalar_t>(), .h0 = h0_c.data_ptr<scalar_t>(),
        .output = output_c.data_ptr<scalar_t>(), .grad_out = grad_output.data_ptr<scalar_t>(),
        .gates = gates_c.data_ptr<scalar_t>(), .d_xproj = d_xproj.data_ptr<scalar_t>(),
        .d_hh = d_hh.data_ptr<scalar_t>(), .dh = dh_state.data_ptr<scalar_t>(), .lengths = lens};
    if (cpu_loop) {
      if constexpr (kCpuKernels) cpu::persistent_gru_backward<scalar_t>(seq);
      return;
    }
    if (cuda_kernel) {
      if (run_persistent_cuda(seq, gates_c, "GRU backward")) return;
      d_hh = at::empty({steps, batch, 3 * hidden}, opts);  // it fell back: the step loop's
    }
    // h before each step, which the step loops read (the persistent loops read the output).
    const Tensor h_prev = previous_states(output_c, h0_c, lengths, reverse);
    const auto kernels = kernels_for<scalar_t>(gates_c);
    if (kernels.gru_backward_fused != nullptr && !toolkit.any()) {
      // One kernel and one GEMM per step (GradFlow, params.h), as the LSTM's.
      Tensor dh_gemm = at::zeros_like(dh_state);
      const std::vector<Tensor> d_hh_steps = (half ? d_hh_half : d_hh).unbind(0);
      for (int64_t step = steps - 1; step >= 0; --step) {
        const int64_t t = step_time(step, steps, reverse);
        const int64_t offset = t * batch * 3 * hidden;
        kernels.gru_backward_fused(
            {.batch = batch, .hidden = hidden, .gates = at_step<scalar_t>(gates_c, t),
             .h_prev = at_step<scalar_t>(h_prev, t), .dh = nullptr,
             .d_xproj = at_step<scalar_t>(d_xproj, t), .d_hh = at_step<scalar_t>(d_hh, t),
             .dh_state = nullptr, .lengths = lens, .t = t,
             .d_xproj_half = half ? half_bits(d_xproj_half) + offset : nullptr,
             .d_hh_half = half ? half_bits(d_hh_half) + offset : nullptr,
             .half_type = half_type_of(out_type)},
            {.grad_out = at_step<scalar_t>(grad_output, t),
             .dh_gemm = dh_gemm.data_ptr<scalar_t>(), .dh_carry = dh_state.data_ptr<scalar_t>()});
        if (half)
          mm_f32_out(dh_gemm, d_hh_steps[t], w_hh_half);
        else
          at::mm_out(dh_gemm, d_hh_steps[t], w_hh_c);
      }
      dh_state.add_(dh_gemm);  // the gradient reaching h0
      return;
    }
    Tensor dh_total = at::empty({batch, hidden}, opts);
    Tensor rec = toolkit.any() ? at::empty({batch, hidden}, opts) : Tensor();
    for (int64_t step = steps - 1; step >= 0; --step) {
      const int64_t t = step_time(step, steps, reverse);
      kernels.grad_h_accumulate({.batch = batch, .h_size = hidden,
                                 .grad_out = at_step<scalar_t>(grad_output, t),
                                 .dh_state = dh_state.data_ptr<scalar_t>(),
                                 .dh_total = dh_total.data_ptr<scalar_t>(), .lengths = lens,
                                 .t = t});
      kernels.gru_backward({.batch = batch, .hidden = hidden,
                            .gates = at_step<scalar_t>(gates_c, t),
                            .h_prev = at_step<scalar_t>(h_prev, t),
                            .dh = dh_total.data_ptr<scalar_t>(),
                            .d_xproj = at_step<scalar_t>(d_xproj, t),
                            .d_hh = at_step<scalar_t>(d_hh, t),
                            .dh_state = dh_state.data_ptr<scalar_t>(), .lengths = lens, .t = t,
                            .zone_h = step_or_null<scalar_t>(toolkit.zone_h, t)});
      if (toolkit.any()) {
        // dh_state = clip(direct paths + mask * (d_hh @ W_hh)): params.h, GradHCombine.
        at::mm_out(rec, d_hh.select(0, t), w_hh_c);
        kernels.grad_h_combine({.batch = batch, .h_size = hidden,
                                .rec = rec.data_ptr<scalar_t>(),
                                .rec_mask = data_or_null<scalar_t>(toolkit.rec_mask),
                                .dh_state = dh_state.data_ptr<scalar_t>(),
                                .grad_clip = static_cast<scalar_t>(toolkit.grad_clip)});
      } else {
        dh_state.addmm_(d_hh.select(0, t), w_hh_c);
      }
    }
  });

  // W_hh's gradient first: d_hh is freed before the input projection's
  // backward allocates its operands. b_hh's r and z parts are b_ih's (d_hh's
  // r and z columns are d_xproj's); its n part is d_hh's last columns' sums.
  Tensor grad_w_hh;
  if (half) {
    const StepBlocks h_prev = previous_state_blocks(output, h0, lengths, reverse);
    grad_w_hh = mm_f32(rows_of(d_hh_half).t(), rows_of(joined(h_prev, 0)));  // exact: h was 16-bit
  } else {
    const std::vector<Tensor> d_hh_columns =
        d_hh.size(2) == 3 * hidden ? std::vector{d_hh}
                                   : std::vector{d_xproj.narrow(2, 0, 2 * hidden), d_hh};
    grad_w_hh = recurrent_weight_grad(
        d_hh_columns, previous_state_blocks(output_c, h0_c, lengths, reverse), toolkit);
  }
  output_c.reset();
  const Tensor grad_b_hh_n = rows_of(d_hh.narrow(2, d_hh.size(2) - hidden, hidden)).sum(0);
  d_hh.reset();
  d_hh_half.reset();
  // The biases summed by ATen: the GEMM row's in-order sums measured past the
  // benchmark's gate (twice torch.nn's error) at T=100 B=64.
  const InputGrads in =
      half ? input_projection_backward_half(d_xproj, d_xproj_half, input, w_ih, grad_input)
           : input_projection_backward(std::move(d_xproj), to_compute(input, compute_type),
                                       to_compute(w_ih, compute_type), grad_input,
                                       BiasGrad::kSum);
  const Tensor grad_b_hh = at::cat({in.bias.narrow(0, 0, 2 * hidden), grad_b_hh_n});
  return {in.input.to(out_type), in.w_ih.to(out_type),     in.bias.to(out_type),
          grad_w_hh.to(out_type), grad_b_hh.to(out_type), dh_state.to(out_type)};
}

int64_t persistent_fallbacks() { return g_persistent_fallbacks.load(); }

}  // namespace fusedrnn
