// The double step kernels: only the explicit instantiation, so the build
// compiles each dtype in parallel.
#include "step_kernels.cuh"

namespace fusedrnn {
namespace cuda {

template StepKernels<double> step_kernels<double>();

}  // namespace cuda
}  // namespace fusedrnn
