#include "layer/gemms.h"

namespace fusedrnn::layer {
namespace {

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

}  // namespace

Tensor gemm_over_steps(const Tensor& a, const Tensor& b, const std::optional<Tensor>& bias) {
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

Tensor input_projection(const Tensor& x, const Tensor& w_ih, const std::optional<Tensor>& bias) {
  const Tensor rows = x.reshape({x.size(0) * x.size(1), x.size(2)});
  return gemm_over_steps(rows, w_ih.t(), bias).view({x.size(0), x.size(1), w_ih.size(0)});
}

InputGrads input_projection_backward(Tensor d_xproj, const Tensor& x, const Tensor& w_ih,
                                     bool grad_input, BiasGrad bias,
                                     const StepBlocks& h_prev) {
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

Tensor input_projection_half(const Tensor& x, const Tensor& w_ih,
                             const std::optional<Tensor>& bias_f32) {
  Tensor out = mm_f32(x.reshape({x.size(0) * x.size(1), x.size(2)}), w_ih.t());
  if (bias_f32) out.add_(*bias_f32);
  return out.view({x.size(0), x.size(1), w_ih.size(0)});
}

InputGrads input_projection_backward_half(const Tensor& d_xproj, const Tensor& d_xproj_half,
                                          const Tensor& x, const Tensor& w_ih, bool grad_input,
                                          const StepBlocks& h_prev) {
  const int64_t rows = d_xproj.size(0) * d_xproj.size(1);
  const Tensor d_rows = d_xproj_half.view({rows, d_xproj.size(2)});
  InputGrads grads;
  grads.input = grad_input ? mm_f32(d_rows, w_ih).view(x.sizes()) : at::empty({0}, x.options());
  grads.w_ih = mm_f32(d_rows.t(), x.reshape({rows, x.size(2)}));
  if (!h_prev.empty()) grads.w_hh = mm_f32(d_rows.t(), rows_of(joined(h_prev, 0)));
  grads.bias = d_xproj.view({rows, d_xproj.size(2)}).sum(0);
  return grads;
}


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
// (steps x batch): the weight gradients, which may share a (W_ih's and
// W_hh's where the cell's products share a gradient). a comes as blocks of its columns, each (T, B, M_j) with unit column
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

StepBlocks recurrent_operands(StepBlocks h_prev, const Toolkit& toolkit) {
  if (toolkit.recurrent_mask)
    for (Tensor& block : h_prev) block = block * *toolkit.recurrent_mask;
  return h_prev;
}

Tensor recurrent_weight_grad(const std::vector<Tensor>& d_hh, const StepBlocks& h_prev,
                             const Toolkit& toolkit) {
  return owned(gemm_tn_over_steps(d_hh, {recurrent_operands(h_prev, toolkit)})).front();
}

}  // namespace fusedrnn::layer
