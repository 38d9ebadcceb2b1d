// The persistent kernels, forward and backward, for double: only the explicit
// instantiations (see persistent.cuh, persistent_backward.cuh), so the build
// compiles each dtype in parallel.
#include "persistent_backward.cuh"

namespace fusedrnn::cuda::persistent {

#define FUSEDRNN_INSTANTIATE(Cell)                           \
  template bool forward<Cell, double>(const Sequence<double>&); \
  template bool backward<Cell, double>(const BackwardSequence<double>&);
FUSEDRNN_FOR_EACH_CELL(FUSEDRNN_INSTANTIATE)
#undef FUSEDRNN_INSTANTIATE

}  // namespace fusedrnn::cuda::persistent
