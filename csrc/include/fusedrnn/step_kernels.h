// The pointwise step kernels, one declaration per job, implemented once for
// the CPU (cpu/) and once for CUDA (cuda/). The layer driver (csrc/layer/)
// picks the set that matches the tensors' device, so the step loop itself is
// the same code on both.
//
// Instantiated for float and double and every cell of FUSEDRNN_FOR_EACH_CELL;
// fp16/bf16 tensors are computed in fp32.
#pragma once

#include "fusedrnn/params.h"

namespace fusedrnn {

// What a cell's step loop runs, per step.
template <class Cell, typename T>
struct CellKernels {
  void (*forward)(const ForwardStep<T>&);
  void (*backward)(const BackwardStep<T>&);
  // layer_norm: one batch row per thread (CPU) or per block (CUDA).
  void (*norm_forward)(const NormForwardStep<T>&);
  void (*norm_backward)(const NormBackwardStep<T>&);
  // One kernel per backward step of a layer without projection or toolkit
  // (the accumulation and carry of dh with the cell's backward: GradFlow in
  // params.h), where a launch costs enough to fuse them (CUDA); nullptr where
  // the loop composes grad_h_accumulate and backward (CPU). The step's `dh`
  // and `dh_state` are unused then.
  void (*backward_fused)(const BackwardStep<T>&, const GradFlow<T>&) = nullptr;
};

// The hidden state's bookkeeping, the same for every cell.
template <typename T>
struct StateKernels {
  void (*projected_commit)(const ProjectedCommit<T>&);
  void (*grad_h_accumulate)(const GradHStep<T>&);
  void (*grad_h_carry)(const GradHStep<T>&);
  void (*grad_h_combine)(const GradHCombine<T>&);  // with the toolkit on
};

namespace cpu {
template <class Cell, typename T>
CellKernels<Cell, T> cell_kernels();  // the widest SIMD the CPU supports
template <typename T>
StateKernels<T> state_kernels();
const char* simd_name();  // "avx512", "avx2" or "default"
}  // namespace cpu

namespace cuda {
template <class Cell, typename T>
CellKernels<Cell, T> cell_kernels();  // launches on the current CUDA stream
template <typename T>
StateKernels<T> state_kernels();
}  // namespace cuda

}  // namespace fusedrnn
