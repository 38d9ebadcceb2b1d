// SIMD activations for the CPU kernels: specialises cells.h's Activations
// for at::vec::Vectorized<T>, so the cell functions run a whole SIMD register
// at a time. fp32 runs ATen's polynomial exp (exp_u20), fp64 the exact exp
// (Sleef's under AVX2); the DEFAULT build's Vectorized maps std::exp over the
// lanes. NaN and +-Inf come out as std::exp gives them, so they propagate as
// in torch.nn.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cmath>
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
      return exp_u20_with_edges(x);
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

 private:
  // exp_u20 clamps its argument into [ln FLT_MIN, ln FLT_MAX] with min/max
  // first, which turns NaN into a finite number and keeps exp(x) finite above
  // ln FLT_MAX. There, x * inf is the exact answer (NaN or +inf): one compare,
  // one multiply and one blend. The DEFAULT build's exp_u20 is std::exp.
  static Vec exp_u20_with_edges(const Vec& x) {
#if defined(CPU_CAPABILITY_AVX2)
    const __m256 ln_flt_max = _mm256_castsi256_ps(_mm256_set1_epi32(0x42b17218));  // exp_u20's
    const __m256 lost = _mm256_cmp_ps(x, ln_flt_max, _CMP_NLE_UQ);  // x > bound, or NaN
    return _mm256_blendv_ps(x.exp_u20(), _mm256_mul_ps(x, _mm256_set1_ps(INFINITY)), lost);
#else
    return x.exp_u20();
#endif
  }
};

}  // namespace fusedrnn
