// CPU step kernels, one batch row at a time. They are compiled once per
// instruction set (row_kernels_default.cpp, row_kernels_avx2.cpp); the
// dispatch in step_kernels.cpp picks a set at run time and spreads the rows
// over threads, so no threading code is built with AVX2 enabled.
#pragma once

#include <cstdint>

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
};

namespace DEFAULT {
template <typename T>
RowKernels<T> row_kernels();
}
namespace AVX2 {
template <typename T>
RowKernels<T> row_kernels();
}

}  // namespace fusedrnn::cpu
