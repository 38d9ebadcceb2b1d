// The persistent kernels, forward and backward, for float: only the explicit
// instantiations (see persistent.cuh, persistent_backward.cuh), so the build
// compiles each dtype in parallel.
#include "persistent_backward.cuh"

namespace fusedrnn::cuda::persistent {

#define FUSEDRNN_INSTANTIATE(Cell)                           \
  template bool forward<Cell, float>(const Sequence<float>&); \
  template bool backward<Cell, float>(const BackwardSequence<float>&);
FUSEDRNN_FOR_EACH_CELL(FUSEDRNN_INSTANTIATE)
#undef FUSEDRNN_INSTANTIATE

}  // namespace fusedrnn::cuda::persistent
