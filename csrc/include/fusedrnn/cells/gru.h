// The GRU cell (torch.nn.GRU's equations, gate order r, z, n):
//   r = sigmoid(x_r + hh_r)   z = sigmoid(x_z + hh_z)
//   n = tanh(x_n + r * hh_n)  h~ = n + z (h_{t-1} - n)
// where hh includes b_hh (b_hn must sit inside r * (.)); then zoneout mixes
// h~ with h_{t-1}. The backward saves r | z | n | hh_n.
#pragma once

#include "fusedrnn/cells/common.h"

namespace fusedrnn::cells {

struct Gru {
  static constexpr const char* kName = "gru";
  static constexpr int kGates = 3;
  static constexpr int kSaved = 4;               // r, z, n and hh_n (W_hn h + b_hn)
  static constexpr bool kCellState = false;
  static constexpr bool kSumsProducts = false;   // hh_n alone: b_hh comes with the product
  static constexpr bool kReadsHPrev = true;
  static constexpr int kSharedGradGates = 2;     // d(hh) = d(x) for r and z, not for n
  static constexpr bool kProjection = false;

  template <typename V>
  using Inputs = CellInputs<V, kGates>;
  template <typename V>
  using Outputs = CellOutputs<V, kSaved>;
  template <typename V>
  using GradInputs = CellGradInputs<V, kSaved>;
  template <typename V>
  using Grads = CellGrads<V, kGates>;

  template <typename V>
  static FUSEDRNN_HD Outputs<V> forward(const Inputs<V>& in, const ElementToolkit<V>& tk) {
    Outputs<V> out;
    const V r = fusedrnn::sigmoid(in.x[0] + in.hh[0]);
    const V z = fusedrnn::sigmoid(in.x[1] + in.hh[1]);
    const V n = fusedrnn::tanh(in.x[2] + r * in.hh[2]);
    out.saved[0] = r;
    out.saved[1] = z;
    out.saved[2] = n;
    out.saved[3] = in.hh[2];
    out.h = tk.mix_h(in.h_prev, n + z * (in.h_prev - n));
    out.c = V(0);
    return out;
  }

  template <typename V>
  static FUSEDRNN_HD Outputs<V> carry(const Inputs<V>& in) {
    Outputs<V> out;
    for (int k = 0; k < kSaved; ++k) out.saved[k] = V(0);
    out.h = in.h_prev;
    out.c = V(0);
    return out;
  }

  template <typename V>
  static FUSEDRNN_HD Grads<V> backward(const GradInputs<V>& in, const ElementToolkit<V>& tk) {
    const V r = in.saved[0], z = in.saved[1], n = in.saved[2], hh_n = in.saved[3], one(1);
    const V dh = tk.to_candidate_h(in.dh);
    const V d_n_pre = dh * (one - z) * (one - n * n);
    Grads<V> d;
    d.d_x[0] = d.d_hh[0] = d_n_pre * hh_n * r * (one - r);
    d.d_x[1] = d.d_hh[1] = dh * (in.h_prev - n) * z * (one - z);
    d.d_x[2] = d_n_pre;
    d.d_hh[2] = d_n_pre * r;  // hh_n sits inside r * (.)
    d.dh_prev = dh * z + tk.to_previous_h(in.dh);
    return d;
  }

  template <typename V>
  static FUSEDRNN_HD Grads<V> carry_grad(const GradInputs<V>& in, const ElementToolkit<V>&) {
    Grads<V> d;
    for (int k = 0; k < kGates; ++k) d.d_x[k] = d.d_hh[k] = V(0);
    d.dh_prev = in.dh;
    return d;
  }
};

}  // namespace fusedrnn::cells
