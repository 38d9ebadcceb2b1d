// CUDA's 16-bit floating-point types for the SIMT build (simt.h includes
// this): storage plus the explicit round-to-nearest-even conversions the
// kernels call. The CUDA build compiles with __CUDA_NO_HALF_CONVERSIONS__ and
// __CUDA_NO_BFLOAT16_CONVERSIONS__, so there too a kernel converts only
// through these functions; no arithmetic is defined on the types.
#pragma once

#include <cstdint>
#include <cstring>

struct alignas(2) __nv_bfloat16 {
  std::uint16_t bits;
};

struct alignas(2) __half {
  std::uint16_t bits;
};

// bfloat16 is the upper half of a float: round the lower 16 bits away to
// nearest even; a NaN stays a (quiet) NaN of the same sign.
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {static_cast<std::uint16_t>((u >> 16) | 0x0040u)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return {static_cast<std::uint16_t>(u >> 16)};
}

inline float __bfloat162float(__nv_bfloat16 h) {
  const std::uint32_t u = static_cast<std::uint32_t>(h.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// IEEE binary16 through the compiler's _Float16 (correctly rounded, with
// subnormals, overflow to infinity and NaN, as the GPU converts).
inline __half __float2half_rn(float f) {
  const _Float16 h = static_cast<_Float16>(f);
  __half out;
  std::memcpy(&out.bits, &h, 2);
  return out;
}

inline float __half2float(__half h) {
  _Float16 v;
  std::memcpy(&v, &h.bits, 2);
  return static_cast<float>(v);
}

// The bits of a 16-bit value (CUDA's __bfloat16_as_ushort / __half_as_ushort).
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.bits; }
inline unsigned short __half_as_ushort(__half h) { return h.bits; }
