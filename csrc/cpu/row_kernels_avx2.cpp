// AVX2+FMA build of the CPU row kernels: ATen's 256-bit Vectorized with
// Sleef's exp/tanh. Only called when the CPU reports AVX2 and FMA
// (step_kernels.cpp); this file holds no threading or ATen op code, so
// nothing compiled here with AVX2 can leak into the portable path.
#include "cpu/row_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#pragma GCC target("avx2,fma,f16c")
// The target pragma enables the instructions but not the feature macros
// that sleef.h reads to declare its 256-bit functions.
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "cpu/row_kernels_impl.h"
#else
// Not an x86-64 build: the AVX2 set is never selected; alias the portable one.
namespace fusedrnn::cpu::AVX2 {
template <typename T>
RowKernels<T> row_kernels() {
  return DEFAULT::row_kernels<T>();
}
template RowKernels<float> row_kernels<float>();
template RowKernels<double> row_kernels<double>();
}  // namespace fusedrnn::cpu::AVX2
#endif
