// Gate math of one LSTM / GRU element, forward and backward.
//
// Every kernel of the project (CPU, CUDA standard, CUDA persistent) calls
// these functions, so the CPU tests check the arithmetic the GPU runs.
// They are templates over the value type V: float and double here, the
// SIMD type at::vec::Vectorized<T> on the CPU (cpu/vec_math.h specialises
// Activations for it).
//
// Gate order follows torch.nn: i, f, g, o for LSTM; r, z, n for GRU with
// n = tanh(x_n + r * (W_hn h + b_hn)).
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define FUSEDRNN_HD __host__ __device__ __forceinline__
#else
#define FUSEDRNN_HD inline
#endif

namespace fusedrnn {

// sigmoid and tanh per value type; a class template so that a later
// specialisation (the SIMD one) is found when the cell functions instantiate.
template <typename V>
struct Activations;

template <>
struct Activations<float> {
  static FUSEDRNN_HD float sigmoid(float x) { return 1.0f / (1.0f + ::expf(-x)); }
  static FUSEDRNN_HD float tanh(float x) { return ::tanhf(x); }
};

template <>
struct Activations<double> {
  static FUSEDRNN_HD double sigmoid(double x) { return 1.0 / (1.0 + ::exp(-x)); }
  static FUSEDRNN_HD double tanh(double x) { return ::tanh(x); }
};

// Called qualified (fusedrnn::tanh) below, so that argument-dependent lookup
// never picks a library's own tanh for a SIMD type instead.
template <typename V>
FUSEDRNN_HD V sigmoid(V x) { return Activations<V>::sigmoid(x); }
template <typename V>
FUSEDRNN_HD V tanh(V x) { return Activations<V>::tanh(x); }

// Comparisons per value type, for the toolkit's clamps. Comparisons, not
// fmin/fmax, so that a NaN stays NaN as in torch.clamp (a NaN compares false
// both ways). cpu/vec_math.h specialises it for the SIMD type.
template <typename V>
struct Compare {
  static FUSEDRNN_HD V clamp(V x, V lo, V hi) { return x > hi ? hi : (x < lo ? lo : x); }
  // grad where lo < x < hi, else 0: the gradient through a clamp (x is the
  // clamped value, so the bounds themselves count as clamped).
  static FUSEDRNN_HD V pass_inside(V x, V lo, V hi, V grad) {
    return (x > lo && x < hi) ? grad : V(0);
  }
};

// A symmetric clamp [-limit, limit] that may be off (cell_clip, grad_clip).
template <typename V>
struct Clip {
  bool on;
  V lo, hi;
  template <typename T>
  static FUSEDRNN_HD Clip make(T limit) {
    return {limit > T(0), V(-limit), V(limit)};
  }
  FUSEDRNN_HD V operator()(V x) const { return on ? Compare<V>::clamp(x, lo, hi) : x; }
  FUSEDRNN_HD V gradient(V clamped, V grad) const {
    return on ? Compare<V>::pass_inside(clamped, lo, hi, grad) : grad;
  }
};

// Zoneout: the new state keeps the previous one with weight d (a 0/1 draw in
// training, the zoneout probability in eval).
template <typename V>
FUSEDRNN_HD V zoneout_mix(V d, V previous, V candidate) {
  return d * previous + (V(1) - d) * candidate;
}

// ---------------------------------------------------------------- LSTM

// Activated gates and new state of one element. Inputs are the gate
// pre-activations (input projection + recurrent product, biases included).
template <typename V>
struct LstmGatesAndState {
  V i, f, g, o;  // activated gates, saved for the backward
  V c;           // new cell state
  V h;           // new hidden state (before any projection)
};

// The new cell state from the activated gates, clamped by cell_clip. The
// backward recomputes it with this same function when zoneout replaced it.
template <typename V>
FUSEDRNN_HD V lstm_new_cell(V i, V f, V g, V c_prev, const Clip<V>& cell_clip) {
  return cell_clip(f * c_prev + i * g);
}

template <typename V>
FUSEDRNN_HD LstmGatesAndState<V> lstm_cell_forward(V pre_i, V pre_f, V pre_g, V pre_o, V c_prev,
                                                   const Clip<V>& cell_clip = {}) {
  LstmGatesAndState<V> out;
  out.i = fusedrnn::sigmoid(pre_i);
  out.f = fusedrnn::sigmoid(pre_f);
  out.g = fusedrnn::tanh(pre_g);
  out.o = fusedrnn::sigmoid(pre_o);
  out.c = lstm_new_cell(out.i, out.f, out.g, c_prev, cell_clip);
  out.h = out.o * fusedrnn::tanh(out.c);
  return out;
}

// Gradients of the gate pre-activations and of the previous cell state.
template <typename V>
struct LstmGrads {
  V d_i, d_f, d_g, d_o;  // d loss / d pre-activation
  V d_c_prev;
};

// dh: gradient reaching the (unprojected) hidden state of this step;
// dc: gradient reaching the cell state of this step from the step after;
// c: the cell state the step computed (clamped by cell_clip, before zoneout).
// Where cell_clip clamped c, no gradient passes to the gates or c_prev.
template <typename V>
FUSEDRNN_HD LstmGrads<V> lstm_cell_backward(V i, V f, V g, V o, V c, V c_prev, V dh, V dc,
                                            const Clip<V>& cell_clip = {}) {
  const V one(1);
  const V tanh_c = fusedrnn::tanh(c);
  const V dc_total = cell_clip.gradient(c, dc + dh * o * (one - tanh_c * tanh_c));
  LstmGrads<V> out;
  out.d_i = dc_total * g * i * (one - i);
  out.d_f = dc_total * c_prev * f * (one - f);
  out.d_g = dc_total * i * (one - g * g);
  out.d_o = dh * tanh_c * o * (one - o);
  out.d_c_prev = dc_total * f;
  return out;
}

// ----------------------------------------------------------------- GRU

template <typename V>
struct GruGatesAndState {
  V r, z, n;  // activated gates, saved for the backward
  V h;        // new hidden state
};

// x_*: input projection (b_ih included); h_*: recurrent product (b_hh included).
template <typename V>
FUSEDRNN_HD GruGatesAndState<V> gru_cell_forward(V x_r, V x_z, V x_n, V h_r, V h_z, V h_n, V h_prev) {
  GruGatesAndState<V> out;
  out.r = fusedrnn::sigmoid(x_r + h_r);
  out.z = fusedrnn::sigmoid(x_z + h_z);
  out.n = fusedrnn::tanh(x_n + out.r * h_n);
  out.h = out.n + out.z * (h_prev - out.n);
  return out;
}

template <typename V>
struct GruGrads {
  V dx_r, dx_z, dx_n;  // d loss / d input projection
  V dh_n;              // d loss / d recurrent product of the n gate (r, z share dx)
  V dh_prev;           // direct path to the previous hidden state (z * dh)
};

// hh_n: the saved recurrent product of the n gate (W_hn h + b_hn).
template <typename V>
FUSEDRNN_HD GruGrads<V> gru_cell_backward(V r, V z, V n, V hh_n, V h_prev, V dh) {
  const V one(1);
  const V d_n_pre = dh * (one - z) * (one - n * n);
  GruGrads<V> out;
  out.dx_n = d_n_pre;
  out.dx_z = dh * (h_prev - n) * z * (one - z);
  out.dx_r = d_n_pre * hh_n * r * (one - r);
  out.dh_n = d_n_pre * r;
  out.dh_prev = dh * z;
  return out;
}

}  // namespace fusedrnn
