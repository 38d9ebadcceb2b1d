// The layer-normalised steps (the toolkit's layer_norm), one batch row at a
// time, written once for the CPU and CUDA kernels.
//
// A norm needs its row's mean and variance, so these steps work on whole
// rows. Each function is written over a row policy that says which elements
// of the row the calling thread owns and how partial sums are combined:
//   SerialRow (here): one thread owns the whole row (the CPU kernels);
//   BlockRow (cuda/step_kernels.cuh): a CUDA block shares the row out.
// Every thread of a row calls the function (a block's threads all reach the
// same sums and syncs). The CPU tests check the arithmetic the GPU runs.
//
// The gate math is the cell's (cells/*.h), on
//   x = LN_ih(W_ih x_t) + b         hh = LN_hh(W_hh h_{t-1}) (+ b_hh, GRU)
// and, for a cell with a cell state (the LSTM, haste's layer-norm LSTM),
// h~ = o * tanh(LN_c(c~)): LN_c needs the row's whole c~ between the cell's
// two halves (cells/lstm.h).
// LN(v) = gain * (v - mean) / sqrt(var + eps) + bias, over the row's vector.
#pragma once

#include <cstdint>

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

// How many norms' 1/sigma a row saves: the recurrent product's, and the
// candidate cell's for cells with a cell state.
template <class Cell>
constexpr int kNorms = Cell::kCellState ? 2 : 1;

// ------------------------------------------------------------ forward

// A finished sequence's row: state carried, zero output and zero saved values.
template <class Cell, typename T, typename Row>
FUSEDRNN_HD void norm_forward_carry(const Row& row, const NormForwardStep<T>& p, int64_t b) {
  const int64_t H = p.hidden, r = b * H;
  for (int64_t k = row.first(); k < Cell::kGates * H; k += row.stride()) p.hh[b * Cell::kGates * H + k] = T(0);
  for (int64_t k = row.first(); k < Cell::kSaved * H; k += row.stride()) p.saved[b * Cell::kSaved * H + k] = T(0);
  for (int64_t j = row.first(); j < H; j += row.stride()) {
    if constexpr (Cell::kCellState) {
      p.c_norm[r + j] = T(0);
      if (p.cells != nullptr) p.cells[r + j] = p.c[r + j];
    }
    p.h_out[r + j] = T(0);
  }
  if (p.rstd != nullptr && row.first() == 0)
    for (int n = 0; n < kNorms<Cell>; ++n) p.rstd[kNorms<Cell> * b + n] = T(0);
}

// The cell's inputs at unit j: xproj and the normalised recurrent product
// (gain, bias, b_hh), and the state before the step.
template <class Cell, typename T>
FUSEDRNN_HD typename Cell::template Inputs<T> norm_inputs(const NormForwardStep<T>& p, int64_t b,
                                                          int64_t j) {
  const int64_t H = p.hidden, GH = Cell::kGates * H;
  typename Cell::template Inputs<T> in;
  for (int g = 0; g < Cell::kGates; ++g) {
    const int64_t k = g * H + j;
    const T normed = p.hh_weight[k] * p.hh[b * GH + k];
    if constexpr (Cell::kSumsProducts) {  // the sum as (x + gain * hh) + bias
      in.x[g] = p.xproj[b * GH + k] + normed;
      in.hh[g] = p.hh_bias[k];
    } else {
      in.x[g] = p.xproj[b * GH + k];
      in.hh[g] = normed + p.hh_bias[k];
      if (p.b_hh != nullptr) in.hh[g] += p.b_hh[k];
    }
  }
  in.h_prev = p.h_state[b * H + j];
  if constexpr (Cell::kCellState) in.c_prev = p.c[b * H + j];
  return in;
}

// The new state of unit j, and what is saved.
template <class Cell, typename T>
FUSEDRNN_HD void norm_commit(const NormForwardStep<T>& p, int64_t b, int64_t j,
                             const typename Cell::template Outputs<T>& out) {
  const int64_t H = p.hidden, r = b * H + j;
  for (int k = 0; k < Cell::kSaved; ++k) p.saved[b * Cell::kSaved * H + k * H + j] = out.saved[k];
  if constexpr (Cell::kCellState) {
    p.c[r] = out.c;
    if (p.cells != nullptr) p.cells[r] = out.c;
  }
  p.h_out[r] = out.h;
  p.h_state[r] = out.h;
  if (p.toolkit.rec_mask != nullptr) p.toolkit.h_masked[r] = out.h * p.toolkit.rec_mask[r];
}

template <class Cell, typename T, typename Row>
FUSEDRNN_HD void norm_forward_row(const Row& row, const NormForwardStep<T>& p, int64_t b) {
  const int64_t H = p.hidden, r = b * H;
  if (!row_active(p.lengths, p.t, b)) return norm_forward_carry<Cell>(row, p, b);
  const T hh_rstd = normalise_row(row, p.hh + b * Cell::kGates * H, Cell::kGates * H);
  T c_rstd(0);
  if constexpr (Cell::kCellState) {
    // c~ first, for the whole row (the gates saved meanwhile), then its norm.
    for (int64_t j = row.first(); j < H; j += row.stride()) {
      const auto a = Cell::gates(norm_inputs<Cell>(p, b, j), element_toolkit(p.toolkit, r + j));
      for (int k = 0; k < Cell::kSaved; ++k) p.saved[b * Cell::kSaved * H + k * H + j] = a.saved[k];
      p.c_norm[r + j] = a.candidate;
    }
    c_rstd = normalise_row(row, p.c_norm + r, H);
    for (int64_t j = row.first(); j < H; j += row.stride()) {
      const auto tk = element_toolkit(p.toolkit, r + j);
      typename Cell::template Inputs<T> in;  // the state before the step: all finish() reads
      in.h_prev = p.h_state[r + j];
      in.c_prev = p.c[r + j];
      typename Cell::template Gates<T> a;
      for (int k = 0; k < Cell::kSaved; ++k) a.saved[k] = p.saved[b * Cell::kSaved * H + k * H + j];
      a.candidate = Cell::candidate_from(a.saved, in.c_prev, tk);
      const T y = p.c_weight[j] * p.c_norm[r + j] + p.c_bias[j];
      norm_commit<Cell>(p, b, j, Cell::finish(a, y, in, tk));
    }
  } else {
    for (int64_t j = row.first(); j < H; j += row.stride())
      norm_commit<Cell>(p, b, j, Cell::forward(norm_inputs<Cell>(p, b, j),
                                               element_toolkit(p.toolkit, r + j)));
  }
  if (p.rstd != nullptr && row.first() == 0) {
    p.rstd[kNorms<Cell> * b] = hh_rstd;
    if constexpr (Cell::kCellState) p.rstd[kNorms<Cell> * b + 1] = c_rstd;
  }
}

// ----------------------------------------------------------- backward

template <class Cell, typename T, typename Row>
FUSEDRNN_HD void norm_backward_carry(const Row& row, const NormBackwardStep<T>& p, int64_t b) {
  const int64_t H = p.hidden, GH = Cell::kGates * H, r = b * H;
  const Clip<T> grad_clip = Clip<T>::make(p.toolkit.grad_clip);
  for (int64_t k = row.first(); k < GH; k += row.stride())
    p.d_xproj[b * GH + k] = p.d_hh_out[b * GH + k] = p.d_hh[b * GH + k] = T(0);
  for (int64_t j = row.first(); j < H; j += row.stride()) {
    if constexpr (Cell::kCellState) {
      p.d_c_norm[r + j] = T(0);
      p.dc[r + j] = grad_clip(p.dc[r + j]);
    }
    p.dh_state[r + j] = p.dh[r + j];
  }
}

template <class Cell, typename T>
FUSEDRNN_HD typename Cell::template GradInputs<T> norm_grad_inputs(const NormBackwardStep<T>& p,
                                                                   int64_t b, int64_t j) {
  const int64_t H = p.hidden, r = b * H + j;
  typename Cell::template GradInputs<T> in;
  for (int k = 0; k < Cell::kSaved; ++k) in.saved[k] = p.saved[b * Cell::kSaved * H + k * H + j];
  if constexpr (Cell::kCellState) {
    in.c = p.cells[r];
    in.c_prev = p.c_prev[r];
    in.dc = p.dc[r];
  }
  if constexpr (Cell::kReadsHPrev) in.h_prev = p.h_prev[r];
  in.dh = p.dh[r];
  return in;
}

// The cell's gradients of unit j: of xproj, of LN_hh's output, and the
// direct paths to h_{t-1} and c_{t-1}.
template <class Cell, typename T>
FUSEDRNN_HD void norm_store_grads(const NormBackwardStep<T>& p, int64_t b, int64_t j,
                                  const typename Cell::template Grads<T>& d) {
  const int64_t H = p.hidden, GH = Cell::kGates * H, r = b * H + j;
  for (int g = 0; g < Cell::kGates; ++g) {
    p.d_xproj[b * GH + g * H + j] = d.d_x[g];
    p.d_hh_out[b * GH + g * H + j] = d.d_hh[g];
  }
  if constexpr (Cell::kCellState) p.dc[r] = d.dc_prev;
  p.dh_state[r] = d.dh_prev;
}

template <class Cell, typename T, typename Row>
FUSEDRNN_HD void norm_backward_row(const Row& row, const NormBackwardStep<T>& p, int64_t b) {
  const int64_t H = p.hidden, GH = Cell::kGates * H, r = b * H;
  if (!row_active(p.lengths, p.t, b)) return norm_backward_carry<Cell>(row, p, b);
  if constexpr (Cell::kCellState) {
    // y = LN_c(c~): y's gradient for the whole row, then the norm's backward
    // (into d_hh's first H, as scratch), then the rest of the cell.
    for (int64_t j = row.first(); j < H; j += row.stride()) {
      const T y = p.c_weight[j] * p.c_norm[r + j] + p.c_bias[j];
      p.d_c_norm[r + j] = Cell::output_backward(norm_grad_inputs<Cell>(p, b, j), y,
                                                element_toolkit(p.toolkit, r + j)).d_y;
    }
    norm_backward_row(row, p.d_c_norm + r, p.c_weight, p.c_norm + r, p.rstd[kNorms<Cell> * b + 1],
                      H, p.d_hh + b * GH);
    for (int64_t j = row.first(); j < H; j += row.stride()) {
      const auto tk = element_toolkit(p.toolkit, r + j);
      const auto in = norm_grad_inputs<Cell>(p, b, j);
      const T y = p.c_weight[j] * p.c_norm[r + j] + p.c_bias[j];
      const T candidate = Cell::candidate_from(in.saved, in.c_prev, tk);
      norm_store_grads<Cell>(p, b, j, Cell::finish_backward(in, candidate,
                                                            Cell::output_backward(in, y, tk).d_o,
                                                            p.d_hh[b * GH + j], tk));
    }
  } else {
    for (int64_t j = row.first(); j < H; j += row.stride())
      norm_store_grads<Cell>(p, b, j, Cell::backward(norm_grad_inputs<Cell>(p, b, j),
                                                     element_toolkit(p.toolkit, r + j)));
  }
  row.sync();  // the gradients of LN_hh's output complete, the scratch in d_hh read
  norm_backward_row(row, p.d_hh_out + b * GH, p.hh_weight, p.hh_norm + b * GH,
                    p.rstd[kNorms<Cell> * b], GH, p.d_hh + b * GH);
}

}  // namespace fusedrnn
