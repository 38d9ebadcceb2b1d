// The Elman RNN cell (torch.nn.RNN's): h~ = act(x + hh), act tanh or relu,
// then zoneout mixes h~ with h_{t-1}. The backward saves act's output.
#pragma once

#include "fusedrnn/cells/common.h"

namespace fusedrnn::cells {

struct TanhActivation {
  static constexpr const char* kName = "rnn_tanh";
  template <typename V>
  static FUSEDRNN_HD V apply(V x) { return fusedrnn::tanh(x); }
  template <typename V>
  static FUSEDRNN_HD V gradient(V out, V grad) { return grad * (V(1) - out * out); }
};

struct ReluActivation {
  static constexpr const char* kName = "rnn_relu";
  template <typename V>
  static FUSEDRNN_HD V apply(V x) { return Compare<V>::relu(x); }
  template <typename V>
  static FUSEDRNN_HD V gradient(V out, V grad) { return Compare<V>::relu_gradient(out, grad); }
};

template <typename Activation>
struct Rnn {
  static constexpr const char* kName = Activation::kName;
  static constexpr int kGates = 1;
  static constexpr int kSaved = 1;               // act(x + hh)
  static constexpr bool kCellState = false;
  static constexpr bool kSumsProducts = true;    // one bias, b_ih + b_hh
  static constexpr bool kReadsHPrev = false;
  static constexpr int kSharedGradGates = 1;
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
    out.saved[0] = Activation::apply(in.x[0] + in.hh[0]);
    out.h = tk.mix_h(in.h_prev, out.saved[0]);
    out.c = V(0);
    return out;
  }

  template <typename V>
  static FUSEDRNN_HD Outputs<V> carry(const Inputs<V>& in) {
    Outputs<V> out;
    out.saved[0] = V(0);
    out.h = in.h_prev;
    out.c = V(0);
    return out;
  }

  template <typename V>
  static FUSEDRNN_HD Grads<V> backward(const GradInputs<V>& in, const ElementToolkit<V>& tk) {
    Grads<V> d;
    d.d_x[0] = d.d_hh[0] = Activation::gradient(in.saved[0], tk.to_candidate_h(in.dh));
    d.dh_prev = tk.to_previous_h(in.dh);
    return d;
  }

  template <typename V>
  static FUSEDRNN_HD Grads<V> carry_grad(const GradInputs<V>& in, const ElementToolkit<V>&) {
    Grads<V> d;
    d.d_x[0] = d.d_hh[0] = V(0);
    d.dh_prev = in.dh;
    return d;
  }
};

using RnnTanh = Rnn<TanhActivation>;
using RnnRelu = Rnn<ReluActivation>;

}  // namespace fusedrnn::cells
