// SIMD activations for the CPU kernels: specialises cells.h's Activations
// for at::vec::Vectorized<T>, so the cell functions run a whole SIMD register
// at a time. fp32 on AVX2 runs a polynomial exp (below), fp64 the exact exp
// (Sleef's under AVX2); the DEFAULT build's Vectorized maps std::exp over the
// lanes. NaN and +-Inf come out as std::exp gives them, so they propagate as
// in torch.nn.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <type_traits>

#include "fusedrnn/cells.h"

namespace fusedrnn {

// exp for fp32 on AVX2, in fewer instructions than ATen's exp_u20 (whose
// clamp loses NaN and keeps exp finite above ln FLT_MAX):
//   exp(x) = 2^n e^r,  n = round(x / ln 2),  |r| <= ln(2) / 2,
// e^r by a degree-5 polynomial fitted for relative error on that interval
// (Lawson-weighted least squares, 1e-7; exp within 4e-7 relative), 2^n
// written into the exponent bits. The clamp keeps NaN (MAXPS/MINPS return
// their second operand when one is NaN) and lets the last product overflow
// to +inf above ln FLT_MAX; below -86.9 it returns exp(-86.9) ~ 2e-38, not 0,
// which only ever meets 1 + e (sigmoid, tanh).
#if defined(CPU_CAPABILITY_AVX2)
inline __m256 exp_avx2(__m256 x) {
  x = _mm256_min_ps(_mm256_set1_ps(88.75f), _mm256_max_ps(_mm256_set1_ps(-86.9f), x));
  // Adding 1.5 * 2^23 rounds x / ln 2 to the integer n, held in t's low mantissa bits.
  const __m256 shifter = _mm256_set1_ps(12582912.f);
  const __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504f), shifter);
  const __m256 r = _mm256_fnmadd_ps(_mm256_sub_ps(t, shifter), _mm256_set1_ps(0.693147182f), x);
  // 2 e^r (the factor 2 pairs with 2^(n-1) below: n = 128 has no exponent bits)
  __m256 p = _mm256_set1_ps(0.0165806282f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.0837958604f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.333352715f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.999983013f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.99999940f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(2.f));
  const __m256i two_n_minus_1 = _mm256_add_epi32(_mm256_slli_epi32(_mm256_castps_si256(t), 23),
                                                 _mm256_set1_epi32(126 << 23));
  return _mm256_mul_ps(p, _mm256_castsi256_ps(two_n_minus_1));
}
#endif

template <typename T>
struct Activations<at::vec::Vectorized<T>> {
  using Vec = at::vec::Vectorized<T>;
  static Vec sigmoid(const Vec& x) {
    const Vec one(T(1));
    return one / (one + exp(x.neg()));
  }
  // fp32: the polynomial exp above, a few times cheaper than Sleef's 1-ulp
  // one (the DEFAULT build's Vectorized has std::exp); fp64 keeps the exact
  // exp (its tolerance is 1e-10).
  static Vec exp(const Vec& x) {
#if defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<T, float>) {
      return exp_avx2(x);
    }
#endif
    return x.exp();
  }
  // tanh(x) = 2 sigmoid(2x) - 1: one exp instead of Sleef's tanh, several
  // times dearer; absolute error stays at a few ulp of 1.
  static Vec tanh(const Vec& x) {
    const Vec two(T(2));
    return two * sigmoid(two * x) - Vec(T(1));
  }
};

}  // namespace fusedrnn
