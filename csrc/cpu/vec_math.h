// SIMD activations for the CPU kernels: specialises cells.h's Activations
// for at::vec::Vectorized<T> (Sleef exp under AVX2, a scalar loop in the
// DEFAULT build), so the cell functions run a whole SIMD register at a
// time.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <type_traits>

#include "fusedrnn/cells.h"

namespace fusedrnn {

template <typename T>
struct Activations<at::vec::Vectorized<T>> {
  using Vec = at::vec::Vectorized<T>;
  static Vec sigmoid(const Vec& x) {
    const Vec one(T(1));
    return one / (one + exp(x.neg()));
  }
  // fp32: ATen's polynomial exp (20 ulp, a few times cheaper than Sleef's
  // 1-ulp one); after 1 / (1 + e) the gate is still within ~1e-6 of exact.
  // fp64 keeps the exact exp (its tolerance is 1e-10).
  static Vec exp(const Vec& x) {
    if constexpr (std::is_same_v<T, float>) {
      return x.exp_u20();
    } else {
      return x.exp();
    }
  }
  // tanh(x) = 2 sigmoid(2x) - 1: one exp instead of Sleef's tanh, several
  // times dearer; absolute error stays at a few ulp of 1.
  static Vec tanh(const Vec& x) {
    const Vec two(T(2));
    return two * sigmoid(two * x) - Vec(T(1));
  }
};

}  // namespace fusedrnn
