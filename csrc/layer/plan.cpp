#include "layer/plan.h"

#include "cpu/gemm.h"
#include "layer/steps.h"

namespace fusedrnn::layer {
namespace {

bool is_16_bit(at::ScalarType dtype) { return dtype == at::kHalf || dtype == at::kBFloat16; }

// fp16/bf16 layers on the CUDA kernels multiply on the tensor cores (16-bit
// operands, fp32 accumulation); a projection or the toolkit's kernels take
// fp32 operands, and the CPU computes 16-bit layers in fp32 throughout.
bool half_operands(const LayerArgs& a) {
  return is_16_bit(a.dtype) && on_cuda_kernels(a.like) && !a.projected && !a.toolkit.any();
}

// The whole-sequence paths have no projection and no toolkit in their kernels.
bool persistent_kernels_take(const LayerArgs& a) { return !a.projected && !a.toolkit.any(); }

// The CPU loops need oneDNN's brgemm for fp32 in this torch build (fp64 runs
// a plain GEMM loop), and a row and a unit to work on.
bool cpu_persistent_fits(const LayerArgs& a) {
  if constexpr (!kCpuKernels) return false;  // the SIMT build has no CPU loops
  else
    return a.batch > 0 && a.hidden > 0 && (a.compute == at::kDouble || cpu::have_brgemm());
}

// Measured faster than the step loop from two steps on (README, Speed); a
// single step (streaming) is cheaper on the step loop, which packs no weights.
bool cpu_persistent_pays_off(const LayerArgs& a) { return a.steps > 1; }

// On CUDA (and SIMT) "auto" keeps the step loop: the persistent kernels have
// not been timed on a GPU yet, so no measured rule picks them
// (fusedrnn.ops.set_persistent("model") lets the analytic model choose).
bool cuda_persistent_measured() { return false; }

Plan cpu_plan(const LayerArgs& a, Direction direction) {
  const char* step_path = "per step ATen's GEMM and the CPU row kernels";
  const Path steps = direction == Direction::forward && !a.projected ? Path::fused_steps
                                                                      : Path::composed_steps;
  if (a.request == PathRequest::steps) return {steps, Gemms::native, "steps asked for"};
  if (!persistent_kernels_take(a))
    return {steps, Gemms::native, std::string(step_path) + ": the persistent loop takes no "
                                  "projection and no toolkit feature"};
  if (!cpu_persistent_fits(a))
    return {steps, Gemms::native, std::string(step_path) + ": the persistent loop needs "
                                  "oneDNN's brgemm (fp32) and a non-empty batch and hidden size"};
  if (a.request == PathRequest::automatic && !cpu_persistent_pays_off(a))
    return {steps, Gemms::native, "a single step: the step loop packs no weights"};
  return {Path::cpu_persistent, Gemms::native,
          a.request == PathRequest::persistent ? "persistent asked for"
                                               : "two steps or more: measured faster"};
}

Plan cuda_plan(const LayerArgs& a, Direction direction) {
  const Gemms gemms = half_operands(a) ? Gemms::half_operands : Gemms::native;
  // One launch per backward step: the fused kernel takes no projection or toolkit.
  const bool fused = !a.projected && (direction == Direction::forward || !a.toolkit.any());
  const Path steps = fused ? Path::fused_steps : Path::composed_steps;
  const bool wants = a.request == PathRequest::persistent ||
                     (a.request == PathRequest::automatic && cuda_persistent_measured());
  if (!wants)
    return {steps, gemms, "the standard kernels: no GPU run has timed the persistent ones yet"};
  if (!persistent_kernels_take(a))
    return {steps, gemms, "the persistent kernels take no projection and no toolkit feature"};
  // The persistent backward computes in fp32 with no 16-bit GEMM operands.
  if (direction == Direction::backward && gemms == Gemms::half_operands)
    return {steps, gemms, "a 16-bit backward keeps its GEMMs on the tensor cores"};
  return {Path::cuda_persistent, gemms,
          "persistent asked for (the step loop if the size does not fit on chip)"};
}

const char* name_of(Path path) {
  switch (path) {
    case Path::cpu_persistent: return "cpu_persistent";
    case Path::cuda_persistent: return "cuda_persistent";
    case Path::fused_steps: return "fused_steps";
    case Path::composed_steps: return "composed_steps";
  }
  return "?";
}

}  // namespace

Plan plan_for(const LayerArgs& a, Direction direction) {
  if (on_cuda_kernels(a.like)) return cuda_plan(a, direction);
  return cpu_plan(a, direction);
}

std::string describe(const Plan& plan) {
  return std::string("path=") + name_of(plan.path) +
         " gemms=" + (plan.gemms == Gemms::half_operands ? "half_operands" : "native") + ": " +
         plan.reason;
}

}  // namespace fusedrnn::layer
