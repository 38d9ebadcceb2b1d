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
template <class Cell, typename T>
CellRows<Cell, T> cell_rows() {
  return DEFAULT::cell_rows<Cell, T>();
}
template <typename T>
StateRows<T> state_rows() {
  return DEFAULT::state_rows<T>();
}
#define FUSEDRNN_INSTANTIATE(Cell)                         \
  template CellRows<Cell, float> cell_rows<Cell, float>(); \
  template CellRows<Cell, double> cell_rows<Cell, double>();
FUSEDRNN_FOR_EACH_CELL(FUSEDRNN_INSTANTIATE)
#undef FUSEDRNN_INSTANTIATE
template StateRows<float> state_rows<float>();
template StateRows<double> state_rows<double>();
}  // namespace fusedrnn::cpu::AVX2
#endif
