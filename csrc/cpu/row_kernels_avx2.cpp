// AVX2+FMA build of the CPU row kernels: ATen's 256-bit Vectorized, with the
// activations of cpu/vec_math.h (fp32: its own polynomial exp; fp64: Sleef's
// exp). setup.py compiles this one file with -mavx2 -mfma -mf16c (x86-64
// only); step_kernels.cpp calls it only where ATen's own CPU capability is
// AVX2. It holds no threading or ATen op code, so nothing compiled here with
// AVX2 runs on the portable path.
#include "cpu/row_kernels.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "cpu/row_kernels_impl.h"
#else
// Built without AVX2 (not x86-64): the AVX2 set is never selected at run
// time; alias the portable one so the symbols exist.
namespace fusedrnn::cpu::AVX2 {
template <typename T>
RowKernels<T> row_kernels() {
  return DEFAULT::row_kernels<T>();
}
template RowKernels<float> row_kernels<float>();
template RowKernels<double> row_kernels<double>();
}  // namespace fusedrnn::cpu::AVX2
#endif
