// What every cell's gate math shares: the activations, the toolkit's clamps
// and zoneout mix, and the values a kernel hands a cell for one element.
//
// The cells (lstm.h, gru.h, rnn.h) are written over a lane type V: a scalar
// (float, double) for a CUDA thread, or at::vec::Vectorized<T> for a run of
// SIMD lanes on the CPU (cpu/vec_math.h specialises Activations and Compare
// for it). Every kernel of the project calls them, so the CPU tests check the
// arithmetic the GPU runs.
#pragma once

#include <cmath>
#include <cstdint>

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

// Comparisons per value type. Comparisons, not fmin/fmax, so that a NaN stays
// NaN as in torch.clamp and torch.relu (a NaN compares false both ways).
// cpu/vec_math.h specialises it for the SIMD type.
template <typename V>
struct Compare {
  static FUSEDRNN_HD V clamp(V x, V lo, V hi) { return x > hi ? hi : (x < lo ? lo : x); }
  // grad where lo < x < hi, else 0: the gradient through a clamp (x is the
  // clamped value, so the bounds themselves count as clamped).
  static FUSEDRNN_HD V pass_inside(V x, V lo, V hi, V grad) {
    return (x > lo && x < hi) ? grad : V(0);
  }
  static FUSEDRNN_HD V relu(V x) { return x < V(0) ? V(0) : x; }
  // torch's threshold_backward: no gradient where the output is <= 0.
  static FUSEDRNN_HD V relu_gradient(V out, V grad) { return out <= V(0) ? V(0) : grad; }
};

// A symmetric clamp [-limit, limit] that may be off (cell_clip, grad_clip).
template <typename V>
struct Clip {
  bool on = false;
  V lo = V(0), hi = V(0);
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

FUSEDRNN_HD bool row_active(const int64_t* lengths, int64_t t, int64_t b) {
  return lengths == nullptr || t < lengths[b];
}

// The toolkit (fusedrnn/features.py) as one element sees it: zoneout's
// weights of the previous state (when on), and the clamps.
template <typename V>
struct ElementToolkit {
  bool zone_h_on = false, zone_c_on = false;
  V zone_h = V(0), zone_c = V(0);
  Clip<V> cell_clip, grad_clip;

  // h (or c) after zoneout: the cell's own candidate mixed with the previous value.
  FUSEDRNN_HD V mix_h(V previous, V candidate) const {
    return zone_h_on ? zoneout_mix(zone_h, previous, candidate) : candidate;
  }
  FUSEDRNN_HD V mix_c(V previous, V candidate) const {
    return zone_c_on ? zoneout_mix(zone_c, previous, candidate) : candidate;
  }
  // The share of a state's gradient that reaches the cell's own candidate
  // (1 - d) and the previous state directly (d).
  FUSEDRNN_HD V to_candidate_h(V grad) const { return zone_h_on ? (V(1) - zone_h) * grad : grad; }
  FUSEDRNN_HD V to_candidate_c(V grad) const { return zone_c_on ? (V(1) - zone_c) * grad : grad; }
  FUSEDRNN_HD V to_previous_h(V grad) const { return zone_h_on ? zone_h * grad : V(0); }
  FUSEDRNN_HD V to_previous_c(V grad) const { return zone_c_on ? zone_c * grad : V(0); }
};

}  // namespace fusedrnn

namespace fusedrnn {

// One element of one step, as every kernel hands it to a cell (G gates, S
// values saved per unit for the backward).
template <typename V, int G>
struct CellInputs {
  V x[G];   // input projection of each gate, its biases in
  V hh[G];  // recurrent product of each gate (with b_hh where the cell takes it)
  V h_prev = V(0), c_prev = V(0);  // the state before the step (c: cells with one)
};

template <typename V, int S>
struct CellOutputs {
  V saved[S];  // what the backward reads (zero where the row is inactive)
  V h, c;      // the new state, after zoneout (carried where inactive)
};

template <typename V, int S>
struct CellGradInputs {
  V saved[S];
  V c = V(0);       // the saved cell state after the step (cells with one)
  V c_prev = V(0);  // the cell state before it
  V h_prev = V(0);  // the hidden state before it
  V dh;             // the gradient reaching h_t (all of it)
  V dc = V(0);      // the gradient reaching c_t from the step after
};

template <typename V, int G>
struct CellGrads {
  V d_x[G];   // of the input projection
  V d_hh[G];  // of the recurrent product (the same as d_x where the cell adds them)
  V dh_prev;  // what reaches h_{t-1} directly, not through W_hh (inactive: all of dh)
  V dc_prev = V(0);
};

}  // namespace fusedrnn
