// Which path a layer call runs and with which GEMM precision, decided in one
// place: plan_for() below. Each rule is a short named function in plan.cpp
// with its reason; the plan carries that reason as text, which
// fusedrnn_debug.<cell>_plan shows for any call.
#pragma once

#include <string>

#include "layer/args.h"

namespace fusedrnn::layer {

enum class Path {
  cpu_persistent,   // cpu/persistent.h: one OpenMP team runs the whole sequence
  cuda_persistent,  // cuda/persistent*.cuh: one cooperative launch (CUDA, or SIMT)
  fused_steps,      // per step one GEMM and one kernel (forward; CUDA backward)
  composed_steps,   // per step the GEMMs and kernels composed (projection,
                    // toolkit, the CPU's backward)
};

enum class Gemms {
  native,         // in the compute dtype (fp32 GEMMs follow torch's TF32 flag on CUDA)
  half_operands,  // 16-bit operands, fp32 accumulation (tensor cores)
};

enum class Direction { forward, backward };

struct Plan {
  Path path;
  Gemms gemms;
  std::string reason;
};

// The plan for a call. The CUDA kernel sets have a fused backward step (one
// launch per step); the CPU's composes its steps.
Plan plan_for(const LayerArgs& a, Direction direction);
std::string describe(const Plan& plan);

}  // namespace fusedrnn::layer
