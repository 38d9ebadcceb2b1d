// CPU step kernels, one batch row at a time. They are compiled once per
// instruction set (row_kernels_{default,avx2,avx512}.cpp); the dispatch in
// step_kernels.cpp picks a set at run time and spreads the rows over
// threads, so no threading code is built with wider vectors enabled.
#pragma once

#include <cstdint>

#include "cpu/gemm.h"
#include "cpu/persistent.h"
#include "fusedrnn/params.h"

namespace fusedrnn::cpu {

// A cell's row kernels (each runs cells/*.h on SIMD lanes).
template <class Cell, typename T>
struct CellRows {
  void (*forward)(const ForwardStep<T>&, int64_t row);
  void (*backward)(const BackwardStep<T>&, int64_t row);
  // One row of a persistent thread's units (cpu/persistent.h).
  void (*forward_slice)(const ForwardSlice<T>&);
  void (*backward_slice)(const BackwardSlice<T>&);
};

// The rows every cell shares.
template <typename T>
struct StateRows {
  void (*projected_commit)(const ProjectedCommit<T>&, int64_t row);
  void (*grad_h_accumulate)(const GradHStep<T>&, int64_t row);
  void (*grad_h_carry)(const GradHStep<T>&, int64_t row);
  void (*grad_h_combine)(const GradHCombine<T>&, int64_t row);
  // A group of four rows of w of a few-row product (gemm.h).
  void (*weight_product)(const WeightProduct<T>&, int64_t group);
};

// The sets for the widest instruction set this CPU supports (step_kernels.cpp).
template <class Cell, typename T>
const CellRows<Cell, T>& best_cell_rows();
template <typename T>
const StateRows<T>& best_state_rows();

#define FUSEDRNN_DECLARE_ROWS(ISA)                \
  namespace ISA {                                 \
  template <class Cell, typename T>               \
  CellRows<Cell, T> cell_rows();                  \
  template <typename T>                           \
  StateRows<T> state_rows();                      \
  }
FUSEDRNN_DECLARE_ROWS(DEFAULT)
FUSEDRNN_DECLARE_ROWS(AVX2)
FUSEDRNN_DECLARE_ROWS(AVX512)
#undef FUSEDRNN_DECLARE_ROWS

}  // namespace fusedrnn::cpu
