// CPU StepKernels: spread the batch rows of a step over ATen's thread pool
// and run the row kernels of the instruction set ATen itself runs.
#include <ATen/Parallel.h>
#include <ATen/Version.h>

#include <string>

#include "cpu/row_kernels.h"
#include "fusedrnn/norm_rows.h"
#include "fusedrnn/step_kernels.h"

namespace fusedrnn::cpu {
namespace {

// ATen's own choice ("DEFAULT", "AVX2" or "AVX512"), which follows the CPU
// and honours ATEN_CPU_CAPABILITY, so one setting tests every build.
const std::string& cpu_capability() {
  static const std::string capability = at::get_cpu_capability();
  return capability;
}

template <typename T>
const RowKernels<T>& rows() {
  return best_row_kernels<T>();
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
void projected_commit(const ProjectedCommit<T>& p) { for_each_row(p, p.h_size, rows<T>().projected_commit); }
template <typename T>
void grad_h_accumulate(const GradHStep<T>& p) { for_each_row(p, p.h_size, rows<T>().grad_h_accumulate); }
template <typename T>
void grad_h_carry(const GradHStep<T>& p) { for_each_row(p, p.h_size, rows<T>().grad_h_carry); }
template <typename T>
void gru_forward(const GruForwardStep<T>& p) { for_each_row(p, 4 * p.hidden, rows<T>().gru_forward); }
template <typename T>
void gru_backward(const GruBackwardStep<T>& p) { for_each_row(p, 4 * p.hidden, rows<T>().gru_backward); }
template <typename T>
void grad_h_combine(const GradHCombine<T>& p) { for_each_row(p, p.h_size, rows<T>().grad_h_combine); }

// The layer-norm steps (norm_rows.h), one thread per row, in plain C++.
template <typename Params, void (*row_function)(const SerialRow&, const Params&, int64_t)>
void serial_row(const Params& p, int64_t b) {
  row_function(SerialRow{}, p, b);
}

template <typename T>
void lstm_norm_forward(const LstmNormForwardStep<T>& p) {
  for_each_row(p, 4 * p.hidden, serial_row<LstmNormForwardStep<T>, lstm_norm_forward_row<T, SerialRow>>);
}
template <typename T>
void lstm_norm_backward(const LstmNormBackwardStep<T>& p) {
  for_each_row(p, 4 * p.hidden, serial_row<LstmNormBackwardStep<T>, lstm_norm_backward_row<T, SerialRow>>);
}
template <typename T>
void gru_norm_forward(const GruNormForwardStep<T>& p) {
  for_each_row(p, 3 * p.hidden, serial_row<GruNormForwardStep<T>, gru_norm_forward_row<T, SerialRow>>);
}
template <typename T>
void gru_norm_backward(const GruNormBackwardStep<T>& p) {
  for_each_row(p, 3 * p.hidden, serial_row<GruNormBackwardStep<T>, gru_norm_backward_row<T, SerialRow>>);
}

}  // namespace

template <typename T>
const RowKernels<T>& best_row_kernels() {
  static const RowKernels<T> kernels = cpu_capability() == "AVX512" ? AVX512::row_kernels<T>()
                                       : cpu_capability() == "AVX2" ? AVX2::row_kernels<T>()
                                                                    : DEFAULT::row_kernels<T>();
  return kernels;
}

template const RowKernels<float>& best_row_kernels<float>();
template const RowKernels<double>& best_row_kernels<double>();

// A few-row product (gemm.h) in groups of four rows of w, spread over the
// threads from about 64K multiply-adds each.
template <typename T>
void weight_product(const WeightProduct<T>& p) {
  const int64_t groups = (p.N + 3) / 4, group_fmas = 4 * p.rows * p.K;
  const int64_t grain = std::max<int64_t>(1, 64 * 1024 / std::max<int64_t>(1, group_fmas));
  at::parallel_for(0, groups, grain, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) rows<T>().weight_product(p, g);
  });
}

template void weight_product<float>(const WeightProduct<float>&);
template void weight_product<double>(const WeightProduct<double>&);

template <typename T>
StepKernels<T> step_kernels() {
  return {.lstm_forward = &lstm_forward<T>,
          .lstm_backward = &lstm_backward<T>,
          .projected_commit = &projected_commit<T>,
          .grad_h_accumulate = &grad_h_accumulate<T>,
          .grad_h_carry = &grad_h_carry<T>,
          .gru_forward = &gru_forward<T>,
          .gru_backward = &gru_backward<T>,
          .grad_h_combine = &grad_h_combine<T>,
          .lstm_norm_forward = &lstm_norm_forward<T>,
          .lstm_norm_backward = &lstm_norm_backward<T>,
          .gru_norm_forward = &gru_norm_forward<T>,
          .gru_norm_backward = &gru_norm_backward<T>};
}

template StepKernels<float> step_kernels<float>();
template StepKernels<double> step_kernels<double>();

const char* simd_name() {
  return cpu_capability() == "AVX512" ? "avx512" : cpu_capability() == "AVX2" ? "avx2" : "default";
}

}  // namespace fusedrnn::cpu
