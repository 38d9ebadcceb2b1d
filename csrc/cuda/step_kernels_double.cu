// The double step kernels: only the explicit instantiations, so the build
// compiles each dtype in parallel.
#include "step_kernels.cuh"

namespace fusedrnn {
namespace cuda {

#define FUSEDRNN_INSTANTIATE(Cell) template CellKernels<Cell, double> cell_kernels<Cell, double>();
FUSEDRNN_FOR_EACH_CELL(FUSEDRNN_INSTANTIATE)
#undef FUSEDRNN_INSTANTIATE
template StateKernels<double> state_kernels<double>();

}  // namespace cuda
}  // namespace fusedrnn
