// CPU StepKernels: spread the batch rows of a step over ATen's thread pool
// and run the row kernels of the instruction set ATen itself runs.
#include <ATen/Parallel.h>
#include <ATen/Version.h>

#include <string>

#include "cpu/row_kernels.h"
#include "fusedrnn/kernels.h"

namespace fusedrnn::cpu {
namespace {

// ATen's capability ("DEFAULT", "AVX2", "AVX512", ...) honours
// ATEN_CPU_CAPABILITY, so ATEN_CPU_CAPABILITY=default runs the portable
// kernels on an AVX2 machine, as it does ATen's own.
bool use_avx2() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool use = [] {
    const std::string aten = at::get_cpu_capability();
    return (aten == "AVX2" || aten == "AVX512") && __builtin_cpu_supports("avx2") &&
           __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  }();
  return use;
#else
  return false;
#endif
}

template <typename T>
const RowKernels<T>& rows() {
  static const RowKernels<T> kernels =
      use_avx2() ? AVX2::row_kernels<T>() : DEFAULT::row_kernels<T>();
  return kernels;
}

// Threads only pay off once a step has a few thousand elements.
template <typename Params>
void for_each_row(const Params& p, int64_t row_width, void (*row)(const Params&, int64_t)) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, row_width));
  at::parallel_for(0, p.batch, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) row(p, b);
  });
}

template <typename T>
void lstm_forward(const LstmForwardStep<T>& p) { for_each_row(p, 4 * p.hidden, rows<T>().lstm_forward); }
template <typename T>
void lstm_backward(const LstmBackwardStep<T>& p) { for_each_row(p, 4 * p.hidden, rows<T>().lstm_backward); }
template <typename T>
void masked_commit(const MaskedCommit<T>& p) { for_each_row(p, p.width, rows<T>().masked_commit); }
template <typename T>
void grad_h_accumulate(const GradHStep<T>& p) { for_each_row(p, p.width, rows<T>().grad_h_accumulate); }
template <typename T>
void grad_h_carry(const GradHStep<T>& p) { for_each_row(p, p.width, rows<T>().grad_h_carry); }
template <typename T>
void gru_forward(const GruForwardStep<T>& p) { for_each_row(p, 4 * p.hidden, rows<T>().gru_forward); }
template <typename T>
void gru_backward(const GruBackwardStep<T>& p) { for_each_row(p, 4 * p.hidden, rows<T>().gru_backward); }

}  // namespace

template <typename T>
StepKernels<T> step_kernels() {
  return {&lstm_forward<T>,     &lstm_backward<T>, &masked_commit<T>, &grad_h_accumulate<T>,
          &grad_h_carry<T>,     &gru_forward<T>,   &gru_backward<T>};
}

template StepKernels<float> step_kernels<float>();
template StepKernels<double> step_kernels<double>();

const char* simd_name() { return use_avx2() ? "avx2" : "default"; }

}  // namespace fusedrnn::cpu
