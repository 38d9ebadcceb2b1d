// CPU step kernels, one batch row at a time. They are compiled once per
// instruction set (row_kernels_{default,avx2,avx512}.cpp); the
// dispatch in step_kernels.cpp picks a set at run time and spreads the rows
// over threads, so no threading code is built with wider vectors enabled.
#pragma once

#include <cstdint>

#include "cpu/gemm.h"
#include "cpu/persistent.h"
#include "fusedrnn/params.h"

namespace fusedrnn::cpu {

template <typename T>
struct RowKernels {
  void (*lstm_forward)(const LstmForwardStep<T>&, int64_t row);
  void (*lstm_backward)(const LstmBackwardStep<T>&, int64_t row);
  void (*projected_commit)(const ProjectedCommit<T>&, int64_t row);
  void (*grad_h_accumulate)(const GradHStep<T>&, int64_t row);
  void (*grad_h_carry)(const GradHStep<T>&, int64_t row);
  void (*gru_forward)(const GruForwardStep<T>&, int64_t row);
  void (*gru_backward)(const GruBackwardStep<T>&, int64_t row);
  void (*grad_h_combine)(const GradHCombine<T>&, int64_t row);
  // A group of four rows of w of a few-row product (gemm.h).
  void (*weight_product)(const WeightProduct<T>&, int64_t group);
  // One row of a persistent thread's units (cpu/persistent.h).
  void (*lstm_forward_slice)(const LstmForwardSlice<T>&);
  void (*lstm_backward_slice)(const LstmBackwardSlice<T>&);
  void (*gru_forward_slice)(const GruForwardSlice<T>&);
  void (*gru_backward_slice)(const GruBackwardSlice<T>&);
};

// The set for the widest instruction set this CPU supports (step_kernels.cpp).
template <typename T>
const RowKernels<T>& best_row_kernels();

namespace DEFAULT {
template <typename T>
RowKernels<T> row_kernels();
}
namespace AVX2 {
template <typename T>
RowKernels<T> row_kernels();
}
namespace AVX512 {
template <typename T>
RowKernels<T> row_kernels();
}

}  // namespace fusedrnn::cpu
