// The layer-normalised steps (the toolkit's layer_norm), one batch row at a
// time, written once for the CPU and CUDA kernels.
//
// A norm needs its row's mean and variance, so these steps work on whole
// rows. Each function is written over a row policy that says which elements
// of the row the calling thread owns and how partial sums are combined:
//   SerialRow (here): one thread owns the whole row (the CPU kernels);
//   BlockRow (cuda/step_kernels.cuh): a CUDA block shares the row out.
// Every thread of a row calls the function (a block's threads all reach the
// same sums and syncs). The gate math is cells.h's, so the CPU tests check
// the arithmetic the GPU runs.
//
// LSTM (haste's layer-norm LSTM):
//   pre = xproj + LN_hh(W_hh h_{t-1})         xproj = LN_ih(W_ih x_t) + b
//   c~ = clip(f * c_{t-1} + i * g)            h~ = o * tanh(LN_c(c~))
// GRU: hh = LN_hh(W_hh h_{t-1}) + b_hh, then the usual gates.
// LN(v) = gain * (v - mean) / sqrt(var + eps) + bias, over the row's vector.
#pragma once

#include <cstdint>

#include "fusedrnn/cells.h"
#include "fusedrnn/params.h"

namespace fusedrnn {

constexpr double kLayerNormEps = 1e-5;  // torch.nn.LayerNorm's default

struct SerialRow {
  FUSEDRNN_HD int64_t first() const { return 0; }
  FUSEDRNN_HD int64_t stride() const { return 1; }
  template <typename T>
  FUSEDRNN_HD T sum(T partial) const { return partial; }
  FUSEDRNN_HD void sync() const {}
};

FUSEDRNN_HD float inverse_sqrt(float x) { return 1.0f / ::sqrtf(x); }
FUSEDRNN_HD double inverse_sqrt(double x) { return 1.0 / ::sqrt(x); }

// Mean and 1/sigma of x[0, n) (two passes: no cancellation in the variance).
template <typename T, typename Row>
FUSEDRNN_HD void row_moments(const Row& row, const T* x, int64_t n, T& mean, T& rstd) {
  T partial(0);
  for (int64_t j = row.first(); j < n; j += row.stride()) partial += x[j];
  mean = row.sum(partial) / T(n);
  partial = T(0);
  for (int64_t j = row.first(); j < n; j += row.stride()) {
    const T d = x[j] - mean;
    partial += d * d;
  }
  rstd = inverse_sqrt(row.sum(partial) / T(n) + T(kLayerNormEps));
}

// x[0, n) replaced by (x - mean) / sigma; returns 1/sigma.
template <typename T, typename Row>
FUSEDRNN_HD T normalise_row(const Row& row, T* x, int64_t n) {
  T mean, rstd;
  row_moments(row, x, n, mean, rstd);
  for (int64_t j = row.first(); j < n; j += row.stride()) x[j] = (x[j] - mean) * rstd;
  row.sync();  // other threads read these values next
  return rstd;
}

// The gradient of a norm's input from the gradient dy of its output
// gain * x_hat + bias, over x_hat[0, n), into dx (which may alias nothing).
template <typename T, typename Row>
FUSEDRNN_HD void norm_backward_row(const Row& row, const T* dy, const T* gain, const T* x_hat,
                                   T rstd, int64_t n, T* dx) {
  T s1(0), s2(0);
  for (int64_t j = row.first(); j < n; j += row.stride()) {
    const T dx_hat = dy[j] * gain[j];
    s1 += dx_hat;
    s2 += dx_hat * x_hat[j];
  }
  const T mean_d = row.sum(s1) / T(n), mean_dx = row.sum(s2) / T(n);
  for (int64_t j = row.first(); j < n; j += row.stride())
    dx[j] = rstd * (dy[j] * gain[j] - mean_d - x_hat[j] * mean_dx);
}

// ---------------------------------------------------------------- LSTM

template <typename T, typename Row>
FUSEDRNN_HD void lstm_norm_forward_row(const Row& row, const LstmNormForwardStep<T>& p,
                                       int64_t b) {
  const int64_t H = p.hidden, G = 4 * H;
  T* hh = p.hh + b * G;
  T* c = p.c + b * H;
  T* c_norm = p.c_norm + b * H;
  T* gates = p.gates + b * G;
  const int64_t r = b * H;  // this row in the (B, H) buffers
  if (!row_active(p.lengths, p.t, b)) {
    // Finished sequence: state carried, zero output and zero saved values.
    for (int64_t j = row.first(); j < G; j += row.stride()) hh[j] = gates[j] = T(0);
    for (int64_t j = row.first(); j < H; j += row.stride()) {
      c_norm[j] = T(0);
      if (p.cells != nullptr) p.cells[r + j] = c[j];
      p.h_out[r + j] = T(0);
    }
    if (p.rstd != nullptr && row.first() == 0) p.rstd[2 * b] = p.rstd[2 * b + 1] = T(0);
    return;
  }
  const T hh_rstd = normalise_row(row, hh, G);
  const T* x = p.xproj + b * G;
  auto pre = [&](int64_t k) { return x[k] + p.hh_weight[k] * hh[k] + p.hh_bias[k]; };
  const Clip<T> cell_clip = Clip<T>::make(p.cell_clip);
  for (int64_t j = row.first(); j < H; j += row.stride()) {
    gates[j] = fusedrnn::sigmoid(pre(j));
    gates[j + H] = fusedrnn::sigmoid(pre(j + H));
    gates[j + 2 * H] = fusedrnn::tanh(pre(j + 2 * H));
    gates[j + 3 * H] = fusedrnn::sigmoid(pre(j + 3 * H));
    c_norm[j] = lstm_new_cell(gates[j], gates[j + H], gates[j + 2 * H], c[j], cell_clip);
  }
  const T c_rstd = normalise_row(row, c_norm, H);  // c~ until now
  for (int64_t j = row.first(); j < H; j += row.stride()) {
    // c~ again, from this thread's own gates, for zoneout's mix.
    const T candidate = lstm_new_cell(gates[j], gates[j + H], gates[j + 2 * H], c[j], cell_clip);
    const T h_new_cell =
        gates[j + 3 * H] * fusedrnn::tanh(p.c_weight[j] * c_norm[j] + p.c_bias[j]);
    const T c_new = p.zone_c != nullptr ? zoneout_mix(p.zone_c[r + j], c[j], candidate) : candidate;
    const T h_new = p.zone_h != nullptr ? zoneout_mix(p.zone_h[r + j], p.h_state[r + j], h_new_cell)
                                        : h_new_cell;
    c[j] = c_new;
    if (p.cells != nullptr) p.cells[r + j] = c_new;
    p.h_out[r + j] = h_new;
    p.h_state[r + j] = h_new;
    if (p.rec_mask != nullptr) p.h_masked[r + j] = h_new * p.rec_mask[r + j];
  }
  if (p.rstd != nullptr && row.first() == 0) {
    p.rstd[2 * b] = hh_rstd;
    p.rstd[2 * b + 1] = c_rstd;
  }
}

template <typename T, typename Row>
FUSEDRNN_HD void lstm_norm_backward_row(const Row& row, const LstmNormBackwardStep<T>& p,
                                        int64_t b) {
  const int64_t H = p.hidden, G = 4 * H, r = b * H;
  T* d_gates = p.d_gates + b * G;
  T* d_hh = p.d_hh + b * G;
  const Clip<T> grad_clip = Clip<T>::make(p.grad_clip);
  if (!row_active(p.lengths, p.t, b)) {
    // dc passes straight through (clamped by grad_clip); zero gradients elsewhere.
    for (int64_t k = row.first(); k < G; k += row.stride()) d_gates[k] = d_hh[k] = T(0);
    for (int64_t j = row.first(); j < H; j += row.stride()) {
      p.d_c_norm[r + j] = T(0);
      p.dc[r + j] = grad_clip(p.dc[r + j]);
    }
    return;
  }
  const T* gates = p.gates + b * G;
  const T* c_norm = p.c_norm + r;
  // h~ = o * tanh(y), y = LN_c(c~): the gradients of o and of y first.
  for (int64_t j = row.first(); j < H; j += row.stride()) {
    const T o = gates[j + 3 * H];
    const T tanh_y = fusedrnn::tanh(p.c_weight[j] * c_norm[j] + p.c_bias[j]);
    const T dh = p.zone_h != nullptr ? (T(1) - p.zone_h[r + j]) * p.dh[r + j] : p.dh[r + j];
    d_gates[j + 3 * H] = dh * tanh_y * o * (T(1) - o);
    p.d_c_norm[r + j] = dh * o * (T(1) - tanh_y * tanh_y);
  }
  // d c~ = LN_c's backward (into d_hh's first H as scratch) + what reaches c~ from c_t.
  norm_backward_row(row, p.d_c_norm + r, p.c_weight, c_norm, p.rstd[2 * b + 1], H, d_hh);
  const Clip<T> cell_clip = Clip<T>::make(p.cell_clip);
  for (int64_t j = row.first(); j < H; j += row.stride()) {
    const T i = gates[j], f = gates[j + H], g = gates[j + 2 * H];
    const T c_prev = p.c_prev[r + j], dc = p.dc[r + j];
    const T keep_c = p.zone_c != nullptr ? p.zone_c[r + j] : T(0);
    const T candidate = lstm_new_cell(i, f, g, c_prev, cell_clip);
    const T d_cell = cell_clip.gradient(candidate, d_hh[j] + (T(1) - keep_c) * dc);
    d_gates[j] = d_cell * g * i * (T(1) - i);
    d_gates[j + H] = d_cell * c_prev * f * (T(1) - f);
    d_gates[j + 2 * H] = d_cell * i * (T(1) - g * g);
    p.dc[r + j] = grad_clip(d_cell * f + keep_c * dc);
  }
  row.sync();  // d_gates complete, the scratch in d_hh read
  norm_backward_row(row, d_gates, p.hh_weight, p.hh_norm + b * G, p.rstd[2 * b], G, d_hh);
}

// ----------------------------------------------------------------- GRU

template <typename T, typename Row>
FUSEDRNN_HD void gru_norm_forward_row(const Row& row, const GruNormForwardStep<T>& p, int64_t b) {
  const int64_t H = p.hidden, G = 3 * H, r = b * H;
  T* hh = p.hh + b * G;
  T* gates = p.gates != nullptr ? p.gates + b * 4 * H : nullptr;
  if (!row_active(p.lengths, p.t, b)) {
    for (int64_t k = row.first(); k < G; k += row.stride()) hh[k] = T(0);
    for (int64_t j = row.first(); j < H; j += row.stride()) {
      if (gates != nullptr) gates[j] = gates[j + H] = gates[j + 2 * H] = gates[j + 3 * H] = T(0);
      p.h_out[r + j] = T(0);
    }
    if (p.rstd != nullptr && row.first() == 0) p.rstd[b] = T(0);
    return;
  }
  const T rstd = normalise_row(row, hh, G);
  const T* x = p.xproj + b * G;
  auto recurrent = [&](int64_t k) {
    return p.hh_weight[k] * hh[k] + p.hh_bias[k] + (p.b_hh != nullptr ? p.b_hh[k] : T(0));
  };
  for (int64_t j = row.first(); j < H; j += row.stride()) {
    const T h_prev = p.h_state[r + j];
    const T hh_n = recurrent(j + 2 * H);
    const GruGatesAndState<T> s = gru_cell_forward<T>(x[j], x[j + H], x[j + 2 * H], recurrent(j),
                                                      recurrent(j + H), hh_n, h_prev);
    if (gates != nullptr) {
      gates[j] = s.r;
      gates[j + H] = s.z;
      gates[j + 2 * H] = s.n;
      gates[j + 3 * H] = hh_n;
    }
    const T h_new = p.zone_h != nullptr ? zoneout_mix(p.zone_h[r + j], h_prev, s.h) : s.h;
    p.h_out[r + j] = h_new;
    p.h_state[r + j] = h_new;
    if (p.rec_mask != nullptr) p.h_masked[r + j] = h_new * p.rec_mask[r + j];
  }
  if (p.rstd != nullptr && row.first() == 0) p.rstd[b] = rstd;
}

template <typename T, typename Row>
FUSEDRNN_HD void gru_norm_backward_row(const Row& row, const GruNormBackwardStep<T>& p,
                                       int64_t b) {
  const int64_t H = p.hidden, G = 3 * H, r = b * H;
  T* d_x = p.d_xproj + b * G;
  T* d_out = p.d_hh_out + b * G;
  T* d_hh = p.d_hh + b * G;
  if (!row_active(p.lengths, p.t, b)) {
    for (int64_t k = row.first(); k < G; k += row.stride()) d_x[k] = d_out[k] = d_hh[k] = T(0);
    for (int64_t j = row.first(); j < H; j += row.stride()) p.dh_state[r + j] = p.dh[r + j];
    return;
  }
  const T* gates = p.gates + b * 4 * H;
  for (int64_t j = row.first(); j < H; j += row.stride()) {
    const T keep = p.zone_h != nullptr ? p.zone_h[r + j] : T(0);
    const T dh = p.dh[r + j];
    const GruGrads<T> d = gru_cell_backward<T>(gates[j], gates[j + H], gates[j + 2 * H],
                                               gates[j + 3 * H], p.h_prev[r + j],
                                               (T(1) - keep) * dh);
    d_x[j] = d_out[j] = d.dx_r;
    d_x[j + H] = d_out[j + H] = d.dx_z;
    d_x[j + 2 * H] = d.dx_n;
    d_out[j + 2 * H] = d.dh_n;
    p.dh_state[r + j] = d.dh_prev + keep * dh;
  }
  row.sync();
  norm_backward_row(row, d_out, p.hh_weight, p.hh_norm + b * G, p.rstd[b], G, d_hh);
}

}  // namespace fusedrnn
