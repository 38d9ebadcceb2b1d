// What the step loops share: views of (T, B, W) buffers, the kernels of a
// tensor's device, and the per-step product h @ W^T.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <optional>

#include "cpu/gemm.h"
#include "fusedrnn/step_kernels.h"

namespace fusedrnn::layer {

using at::Tensor;

// The CUDA kernels are built for CUDA tensors (FUSEDRNN_WITH_CUDA), or in the
// SIMT build (FUSEDRNN_SIMT, csrc/simt/) for CPU tensors: there the CUDA
// sources run on the CPU and stand in for a GPU, with ATen's GEMMs in
// cuBLAS's place.
#if defined(FUSEDRNN_WITH_CUDA) || defined(FUSEDRNN_SIMT)
#define FUSEDRNN_CUDA_KERNELS 1
#endif

// Whether CPU tensors run the C++ CPU kernels (cpu/): all but the SIMT build,
// where the CUDA kernel sources run on CPU tensors in their place.
#ifdef FUSEDRNN_SIMT
constexpr bool kCpuKernels = false;
#else
constexpr bool kCpuKernels = true;
#endif

// Whether `t` is where this build's CUDA kernels run: CUDA tensors, or CPU
// tensors in the SIMT build.
inline bool on_cuda_kernels(const Tensor& t) { return kCpuKernels ? t.is_cuda() : t.is_cpu(); }

// Every op computes in its inputs' dtypes: the caller (fusedrnn/ops.py) casts
// for torch.autocast as torch.nn would, and no ATen call inside an op is
// autocast again.
using NoAutocast = c10::impl::ExcludeDispatchKeyGuard;

template <class Cell, typename T>
CellKernels<Cell, T> cell_kernels_for(const Tensor& t) {
#ifdef FUSEDRNN_SIMT
  TORCH_CHECK(t.is_cpu(), "fusedrnn (SIMT build): CPU tensors only, got a tensor on ", t.device());
  return cuda::cell_kernels<Cell, T>();
#else
  if (t.is_cuda()) {
#ifdef FUSEDRNN_WITH_CUDA
    return cuda::cell_kernels<Cell, T>();
#else
    TORCH_CHECK(false, "fusedrnn: this build has no CUDA kernels (built without a CUDA toolkit)");
#endif
  }
  TORCH_CHECK(t.is_cpu(), "fusedrnn: unsupported device ", t.device());
  return cpu::cell_kernels<Cell, T>();
#endif
}

template <typename T>
StateKernels<T> state_kernels_for(const Tensor& t) {
#ifdef FUSEDRNN_SIMT
  return cuda::state_kernels<T>();
#else
#ifdef FUSEDRNN_WITH_CUDA
  if (t.is_cuda()) return cuda::state_kernels<T>();
#endif
  return cpu::state_kernels<T>();
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
template <typename T>
T* data_or_null(const Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
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

// ------------------------------------------------------ 16-bit operands

inline HalfType half_type_of(at::ScalarType dtype) {
  return dtype == at::kBFloat16 ? HalfType::bf16 : HalfType::fp16;
}

inline std::uint16_t* half_bits(const Tensor& t) {
  return t.defined() ? reinterpret_cast<std::uint16_t*>(t.data_ptr()) : nullptr;
}

// a @ b for 16-bit a, b into fp32 `out`. cuBLAS multiplies on the tensor
// cores and accumulates in fp32; in the SIMT build ATen's CPU GEMM stands in,
// on the same operands (their products are exact in fp32).
inline void mm_f32_out(Tensor& out, const Tensor& a, const Tensor& b) {
  if (a.is_cuda())
    at::mm_out(out, a, b, at::kFloat);
  else
    at::mm_out(out, a.to(at::kFloat), b.to(at::kFloat));
}

inline Tensor mm_f32(const Tensor& a, const Tensor& b) {
  Tensor out = at::empty({a.size(0), b.size(1)}, a.options().dtype(at::kFloat));
  mm_f32_out(out, a, b);
  return out;
}

}  // namespace fusedrnn::layer
