// The float step kernels: only the explicit instantiations, so the build
// compiles each dtype in parallel.
#include "step_kernels.cuh"

namespace fusedrnn {
namespace cuda {

#define FUSEDRNN_INSTANTIATE(Cell) template CellKernels<Cell, float> cell_kernels<Cell, float>();
FUSEDRNN_FOR_EACH_CELL(FUSEDRNN_INSTANTIATE)
#undef FUSEDRNN_INSTANTIATE
template StateKernels<float> state_kernels<float>();

}  // namespace cuda
}  // namespace fusedrnn
