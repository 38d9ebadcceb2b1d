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

// Threads only pay off once a step has a few thousand elements.
template <typename Params>
void for_each_row(const Params& p, int64_t row_width, void (*row)(const Params&, int64_t)) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, row_width));
  at::parallel_for(0, p.batch, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) row(p, b);
  });
}

template <class Cell, typename T>
void forward(const ForwardStep<T>& p) {
  for_each_row(p, Cell::kSaved * p.hidden, best_cell_rows<Cell, T>().forward);
}
template <class Cell, typename T>
void backward(const BackwardStep<T>& p) {
  for_each_row(p, Cell::kSaved * p.hidden, best_cell_rows<Cell, T>().backward);
}

// The layer-norm steps (norm_rows.h), one thread per row, in plain C++.
template <class Cell, typename T>
void norm_forward_row(const NormForwardStep<T>& p, int64_t b) {
  fusedrnn::norm_forward_row<Cell>(SerialRow{}, p, b);
}
template <class Cell, typename T>
void norm_backward_row(const NormBackwardStep<T>& p, int64_t b) {
  fusedrnn::norm_backward_row<Cell>(SerialRow{}, p, b);
}
template <class Cell, typename T>
void norm_forward(const NormForwardStep<T>& p) {
  for_each_row(p, Cell::kGates * p.hidden, &norm_forward_row<Cell, T>);
}
template <class Cell, typename T>
void norm_backward(const NormBackwardStep<T>& p) {
  for_each_row(p, Cell::kGates * p.hidden, &norm_backward_row<Cell, T>);
}

template <typename T>
void projected_commit(const ProjectedCommit<T>& p) {
  for_each_row(p, p.h_size, best_state_rows<T>().projected_commit);
}
template <typename T>
void grad_h_accumulate(const GradHStep<T>& p) {
  for_each_row(p, p.h_size, best_state_rows<T>().grad_h_accumulate);
}
template <typename T>
void grad_h_carry(const GradHStep<T>& p) {
  for_each_row(p, p.h_size, best_state_rows<T>().grad_h_carry);
}
template <typename T>
void grad_h_combine(const GradHCombine<T>& p) {
  for_each_row(p, p.h_size, best_state_rows<T>().grad_h_combine);
}

// The set of the widest instruction set ATen runs.
template <typename Set, typename Default, typename Avx2, typename Avx512>
Set best_set(Default scalar, Avx2 avx2, Avx512 avx512) {
  return cpu_capability() == "AVX512" ? avx512() : cpu_capability() == "AVX2" ? avx2() : scalar();
}

}  // namespace

template <class Cell, typename T>
const CellRows<Cell, T>& best_cell_rows() {
  static const CellRows<Cell, T> rows = best_set<CellRows<Cell, T>>(
      DEFAULT::cell_rows<Cell, T>, AVX2::cell_rows<Cell, T>, AVX512::cell_rows<Cell, T>);
  return rows;
}

template <typename T>
const StateRows<T>& best_state_rows() {
  static const StateRows<T> rows = best_set<StateRows<T>>(
      DEFAULT::state_rows<T>, AVX2::state_rows<T>, AVX512::state_rows<T>);
  return rows;
}

// A few-row product (gemm.h) in groups of four rows of w, spread over the
// threads from about 64K multiply-adds each.
template <typename T>
void weight_product(const WeightProduct<T>& p) {
  const int64_t groups = (p.N + 3) / 4, group_fmas = 4 * p.rows * p.K;
  const int64_t grain = std::max<int64_t>(1, 64 * 1024 / std::max<int64_t>(1, group_fmas));
  at::parallel_for(0, groups, grain, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) best_state_rows<T>().weight_product(p, g);
  });
}

template <class Cell, typename T>
CellKernels<Cell, T> cell_kernels() {
  return {.forward = &forward<Cell, T>,
          .backward = &backward<Cell, T>,
          .norm_forward = &norm_forward<Cell, T>,
          .norm_backward = &norm_backward<Cell, T>};
}

template <typename T>
StateKernels<T> state_kernels() {
  return {.projected_commit = &projected_commit<T>,
          .grad_h_accumulate = &grad_h_accumulate<T>,
          .grad_h_carry = &grad_h_carry<T>,
          .grad_h_combine = &grad_h_combine<T>};
}

#define FUSEDRNN_INSTANTIATE(Cell)                                          \
  template const CellRows<Cell, float>& best_cell_rows<Cell, float>();     \
  template const CellRows<Cell, double>& best_cell_rows<Cell, double>();   \
  template CellKernels<Cell, float> cell_kernels<Cell, float>();           \
  template CellKernels<Cell, double> cell_kernels<Cell, double>();
FUSEDRNN_FOR_EACH_CELL(FUSEDRNN_INSTANTIATE)
#undef FUSEDRNN_INSTANTIATE
template const StateRows<float>& best_state_rows<float>();
template const StateRows<double>& best_state_rows<double>();
template StateKernels<float> state_kernels<float>();
template StateKernels<double> state_kernels<double>();
template void weight_product<float>(const WeightProduct<float>&);
template void weight_product<double>(const WeightProduct<double>&);

const char* simd_name() {
  return cpu_capability() == "AVX512" ? "avx512" : cpu_capability() == "AVX2" ? "avx2" : "default";
}

}  // namespace fusedrnn::cpu
