// SIMD activations for the CPU kernels: specialises cells.h's Activations
// for at::vec::Vectorized<T> (Sleef exp/tanh under AVX2, a scalar loop in
// the DEFAULT build), so the cell functions run a whole SIMD register at a
// time.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include "fusedrnn/cells.h"

namespace fusedrnn {

template <typename T>
struct Activations<at::vec::Vectorized<T>> {
  using Vec = at::vec::Vectorized<T>;
  static Vec sigmoid(const Vec& x) {
    const Vec one(T(1));
    return one / (one + x.neg().exp());
  }
  static Vec tanh(const Vec& x) { return x.tanh(); }
};

}  // namespace fusedrnn
