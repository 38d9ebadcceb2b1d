// What the step loops of recurrence.cpp and norm_recurrence.cpp share:
// the kernels of a tensor's device, views of (T, B, W) buffers, the
// toolkit's arguments, and the GEMMs over all steps.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <optional>
#include <vector>

#include "cpu/gemm.h"
#include "fusedrnn/step_kernels.h"
#include "op_checks.h"

namespace fusedrnn {

using at::Tensor;

// Whether CPU tensors run the C++ CPU kernels (cpu/): all but the SIMT build.
#ifdef FUSEDRNN_SIMT
constexpr bool kCpuKernels = false;
#else
constexpr bool kCpuKernels = true;
#endif

// Every op computes in its inputs' dtypes: the caller (fusedrnn/ops.py) casts
// for torch.autocast as torch.nn would, and no ATen call inside an op is
// autocast again.
using NoAutocast = c10::impl::ExcludeDispatchKeyGuard;

template <typename T>
StepKernels<T> kernels_for(const Tensor& t) {
#ifdef FUSEDRNN_SIMT
  TORCH_CHECK(t.is_cpu(), "fusedrnn (SIMT build): CPU tensors only, got a tensor on ", t.device());
  return cuda::step_kernels<T>();
#else
  if (t.is_cuda()) {
#ifdef FUSEDRNN_WITH_CUDA
    return cuda::step_kernels<T>();
#else
    TORCH_CHECK(false, "fusedrnn: this build has no CUDA kernels (built without a CUDA toolkit)");
#endif
  }
  TORCH_CHECK(t.is_cpu(), "fusedrnn: unsupported device ", t.device());
  return cpu::step_kernels<T>();
#endif
}

// Index of the s-th step processed.
inline int64_t step_time(int64_t s, int64_t steps, bool reverse) {
  return reverse ? steps - 1 - s : s;
}

template <typename T>
T* at_step(const Tensor& seq, int64_t t) {  // seq: contiguous (T, B, W)
  return seq.data_ptr<T>() + t * seq.size(1) * seq.size(2);
}

// A saved (T, B, W) buffer at step t, or nullptr when nothing is saved.
template <typename T>
T* saved_at(const Tensor& seq, int64_t t) {
  return seq.size(0) == 0 ? nullptr : at_step<T>(seq, t);
}

template <typename T>
T* data_or_null(const std::optional<Tensor>& t) {
  return t ? t->data_ptr<T>() : nullptr;
}

// Step t of an optional (T, B, W) tensor, or nullptr.
template <typename T>
T* step_or_null(const std::optional<Tensor>& seq, int64_t t) {
  return seq ? at_step<T>(*seq, t) : nullptr;
}

inline Tensor to_compute(const Tensor& t, at::ScalarType compute_type) {
  return t.to(compute_type).contiguous();
}

inline std::optional<Tensor> to_compute(const std::optional<Tensor>& t,
                                        at::ScalarType compute_type) {
  if (!t) return std::nullopt;
  return to_compute(*t, compute_type);
}

// W^T for the step loop's per-step product h @ W^T. BLAS runs that product
// several times faster on a row-major copy than on the transposed view, but
// the copy costs more than it saves in a call of a step or two.
inline Tensor per_step_operand(const Tensor& w, int64_t steps) {
  return steps > 2 ? w.t().contiguous() : w.t();
}

// The per-step product of a step loop, out = a @ W^T (+ bias), with W as
// torch stores it (N x K). A few fp32/fp64 rows on the CPU kernels (a
// streaming call) run cpu::weight_product on W itself, the rest ATen's GEMM
// on per_step_operand(W).
class StepProduct {
 public:
  StepProduct(const Tensor& w, int64_t steps, int64_t rows)
      : w_(w), few_rows_(few_rows(w, rows)) {
    if (!few_rows_) w_t_ = per_step_operand(w, steps);
  }

  // out = a @ W^T (+ bias on every row); a and out row-major.
  void operator()(Tensor& out, const Tensor& a,
                  const std::optional<Tensor>& bias = std::nullopt) const {
    if constexpr (kCpuKernels) {
      if (few_rows_) {
        TORCH_INTERNAL_ASSERT(a.stride(1) == 1 && out.stride(1) == 1);
        AT_DISPATCH_FLOATING_TYPES(w_.scalar_type(), "fusedrnn::StepProduct", [&] {
          cpu::weight_product<scalar_t>(
              {.rows = a.size(0), .N = w_.size(0), .K = w_.size(1), .a = a.data_ptr<scalar_t>(),
               .lda = a.stride(0), .w = w_.data_ptr<scalar_t>(),
               .bias = bias ? bias->data_ptr<scalar_t>() : nullptr,
               .out = out.data_ptr<scalar_t>(), .ldo = out.stride(0)});
        });
        return;
      }
    }
    if (bias)
      at::addmm_out(out, *bias, a, w_t_);
    else
      at::mm_out(out, a, w_t_);
  }

  // W^T, for a caller's own GEMM (the 16-bit one); never taken with few rows.
  const Tensor& transposed() const { return w_t_; }

 private:
  static bool few_rows(const Tensor& w, int64_t rows) {
    const auto type = w.scalar_type();
    return kCpuKernels && w.is_cpu() && (type == at::kFloat || type == at::kDouble) &&
           w.is_contiguous() && rows <= cpu::kMaxFewRows;
  }

  Tensor w_, w_t_;
  bool few_rows_;
};

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

// a^T @ b for a (T, B, M), given as blocks of its columns, and each b of
// `bs`, over all steps: the weight gradients. The products may be views into
// one buffer; owned() copies them out (recurrence.cpp says when).
std::vector<Tensor> gemm_tn_over_steps(const std::vector<Tensor>& a,
                                       const std::vector<StepBlocks>& bs);
std::vector<Tensor> owned(std::vector<Tensor> products);

// ------------------------------------------------------------- toolkit
// The toolkit arguments of one call (csrc/ops.cpp documents them), checked
// and in the compute dtype. The persistent paths take none of them: with any
// one on, the step loop runs.

struct Toolkit {
  std::optional<Tensor> rec_mask, zone_h, zone_c;
  double cell_clip = 0, grad_clip = 0;
  bool any() const { return rec_mask || zone_h || zone_c || cell_clip > 0 || grad_clip > 0; }
};

struct ToolkitShape {
  int64_t steps, batch, hidden, h_size;
  bool projected;
};

Toolkit check_toolkit(const checks::OpArgs& args, const ToolkitShape& s, at::ScalarType dtype,
                      const std::optional<Tensor>& rec_mask, const std::optional<Tensor>& zone_h,
                      const std::optional<Tensor>& zone_c, double cell_clip, double grad_clip);

// h_prev (T, B, P) as the recurrent product took it: times the recurrent
// dropout mask, the same at every step.
StepBlocks recurrent_operands(StepBlocks h_prev, const Toolkit& toolkit);

// W_hh's gradient d_hh^T @ h_prev, h_prev as the recurrent product took it;
// d_hh (T, B, G*H) as blocks of its columns (gemm_tn_over_steps' a).
Tensor recurrent_weight_grad(const std::vector<Tensor>& d_hh, const StepBlocks& h_prev,
                             const Toolkit& toolkit);

}  // namespace fusedrnn
