// Portable build of the CPU row kernels (any x86-64 or Arm CPU).
#define CPU_CAPABILITY DEFAULT
#include "cpu/row_kernels_impl.h"
