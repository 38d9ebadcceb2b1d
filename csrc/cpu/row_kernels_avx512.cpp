// AVX-512 build of the CPU row kernels: ATen's 512-bit Vectorized. setup.py
// compiles this one file with the AVX-512 flags (x86-64 only);
// step_kernels.cpp calls it only where ATen's own CPU capability is AVX512.
// It holds no threading or ATen op code, so nothing compiled here with
// AVX-512 runs on another path.
#include "cpu/row_kernels.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && defined(__FMA__)
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include "cpu/row_kernels_impl.h"
#else
// Built without AVX-512 (not x86-64): never selected at run time; alias the
// portable set so the symbols exist.
namespace fusedrnn::cpu::AVX512 {
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
}  // namespace fusedrnn::cpu::AVX512
#endif
