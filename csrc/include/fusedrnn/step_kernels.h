// The pointwise step kernels, one declaration per job, implemented once for
// the CPU (cpu/) and once for CUDA (cuda/). The orchestration in
// recurrence.cpp picks the set that matches the tensors' device, so the step
// loop itself is the same code on both.
//
// Instantiated for float and double; fp16/bf16 tensors are computed in fp32.
#pragma once

#include "fusedrnn/params.h"

namespace fusedrnn {

template <typename T>
struct StepKernels {
  void (*lstm_forward)(const LstmForwardStep<T>&);
  void (*lstm_backward)(const LstmBackwardStep<T>&);
  void (*projected_commit)(const ProjectedCommit<T>&);
  void (*grad_h_accumulate)(const GradHStep<T>&);
  void (*grad_h_carry)(const GradHStep<T>&);
  void (*gru_forward)(const GruForwardStep<T>&);
  void (*gru_backward)(const GruBackwardStep<T>&);
  void (*grad_h_combine)(const GradHCombine<T>&);  // with the toolkit on (GradHCombine)
  // layer_norm: one batch row per thread (CPU) or per block (CUDA).
  void (*lstm_norm_forward)(const LstmNormForwardStep<T>&);
  void (*lstm_norm_backward)(const LstmNormBackwardStep<T>&);
  void (*gru_norm_forward)(const GruNormForwardStep<T>&);
  void (*gru_norm_backward)(const GruNormBackwardStep<T>&);
  // One kernel per backward step of a layer without projection (accumulation
  // and carry of dh with the cell's backward: GradFlow in params.h), where a
  // launch costs enough to fuse them (CUDA); nullptr where the loop composes
  // grad_h_accumulate, *_backward and grad_h_carry (CPU). The `dh` and
  // `dh_state` fields of the step are unused then.
  void (*lstm_backward_fused)(const LstmBackwardStep<T>&, const GradFlow<T>&) = nullptr;
  void (*gru_backward_fused)(const GruBackwardStep<T>&, const GradFlow<T>&) = nullptr;
};

namespace cpu {
template <typename T>
StepKernels<T> step_kernels();  // picks the widest SIMD the CPU supports
const char* simd_name();        // "avx2" or "default"
}  // namespace cpu

namespace cuda {
template <typename T>
StepKernels<T> step_kernels();  // launches on the current CUDA stream
}  // namespace cuda

}  // namespace fusedrnn
