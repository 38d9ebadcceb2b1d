// SIMD activations for the CPU kernels: specialises cells/common.h's Activations
// for at::vec::Vectorized<T>, so the cell functions run a whole SIMD register
// at a time. fp32 on AVX2/AVX-512 runs a polynomial exp (below), fp64 the
// exact exp (Sleef's); the DEFAULT build's Vectorized maps std::exp over the
// lanes. NaN and +-Inf come out as std::exp gives them, so they propagate as
// in torch.nn.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <type_traits>

#include "fusedrnn/cells/common.h"

namespace fusedrnn {

// exp for fp32 in the AVX2 and AVX-512 builds, in fewer instructions than
// ATen's exp_u20 (whose clamp loses NaN and keeps exp finite above
// ln FLT_MAX):
//   exp(x) = 2^n e^r,  n = round(x / ln 2),  |r| <= ln(2) / 2,
// e^r by a degree-5 polynomial fitted for relative error on that interval
// (Lawson-weighted least squares, 1e-7; exp within 4e-7 relative), 2^n
// written into the exponent bits. The clamp keeps NaN (clamp_min/clamp_max
// hand x to MAXPS/MINPS second, which return it when either is NaN) and lets
// the last product overflow to +inf above ln FLT_MAX; below -86.9 it returns
// exp(-86.9) ~ 2e-38, not 0, which only ever meets 1 + e (sigmoid, tanh).
template <typename Vec>
inline Vec exp_poly(const Vec& input) {
  using Int = at::vec::Vectorized<int32_t>;
  const Vec x = at::vec::clamp_max(at::vec::clamp_min(input, Vec(-86.9f)), Vec(88.75f));
  // Adding 1.5 * 2^23 rounds x / ln 2 to the integer n, held in t's low mantissa bits.
  const Vec shifter(12582912.f);
  const Vec t = at::vec::fmadd(x, Vec(1.44269504f), shifter);
  const Vec r = at::vec::fnmadd(t - shifter, Vec(0.693147182f), x);
  // 2 e^r (the factor 2 pairs with 2^(n-1) below: n = 128 has no exponent bits)
  Vec p(0.0165806282f);
  p = at::vec::fmadd(p, r, Vec(0.0837958604f));
  p = at::vec::fmadd(p, r, Vec(0.333352715f));
  p = at::vec::fmadd(p, r, Vec(0.999983013f));
  p = at::vec::fmadd(p, r, Vec(1.99999940f));
  p = at::vec::fmadd(p, r, Vec(2.f));
  const Int two_n_minus_1 = (at::vec::cast<int32_t>(t) << Int(23)) + Int(126 << 23);
  return p * at::vec::cast<float>(two_n_minus_1);
}

template <typename T>
struct Activations<at::vec::Vectorized<T>> {
  using Vec = at::vec::Vectorized<T>;
  static Vec sigmoid(const Vec& x) {
    const Vec one(T(1));
    return one / (one + exp(x.neg()));
  }
  // fp32: the polynomial exp above, a few times cheaper than Sleef's 1-ulp
  // one (the DEFAULT build's Vectorized runs std::exp); fp64 keeps the exact
  // exp (its tolerance is 1e-10).
  static Vec exp(const Vec& x) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<T, float>) {
      return exp_poly(x);
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

// cells/common.h's comparisons on SIMD lanes: blends on lane masks, so that a NaN lane
// stays NaN (its comparisons are false) as in torch.clamp.
template <typename T>
struct Compare<at::vec::Vectorized<T>> {
  using Vec = at::vec::Vectorized<T>;
  static Vec clamp(const Vec& x, const Vec& lo, const Vec& hi) {
    const Vec upper = Vec::blendv(x, hi, x > hi);
    return Vec::blendv(upper, lo, x < lo);
  }
  static Vec pass_inside(const Vec& x, const Vec& lo, const Vec& hi, const Vec& grad) {
    return Vec::blendv(Vec(T(0)), grad, (x > lo) & (x < hi));
  }
  static Vec relu(const Vec& x) { return Vec::blendv(x, Vec(T(0)), x < Vec(T(0))); }
  static Vec relu_gradient(const Vec& out, const Vec& grad) {
    return Vec::blendv(grad, Vec(T(0)), out <= Vec(T(0)));
  }
};

}  // namespace fusedrnn
