// The float step kernels: only the explicit instantiation, so the build
// compiles each dtype in parallel.
#include "step_kernels.cuh"

namespace fusedrnn {
namespace cuda {

template StepKernels<float> step_kernels<float>();

}  // namespace cuda
}  // namespace fusedrnn
