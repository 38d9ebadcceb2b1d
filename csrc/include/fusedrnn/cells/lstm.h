// The LSTM cell (torch.nn.LSTM's equations, gate order i, f, g, o):
//   i, f, o = sigmoid(pre_i, pre_f, pre_o)   g = tanh(pre_g)   pre = x + hh
//   c~ = clip(f c_{t-1} + i g)                h~ = o tanh(c~)
// then zoneout mixes h~, c~ with the previous state. The backward saves the
// activated gates (i|f|g|o) and the cell state after each step.
//
// The layer norm on c~ (the toolkit's layer_norm) needs its whole row between
// c~ and the output's tanh, so the cell is also written in its two halves:
// gates() then finish(), and in the backward output_backward() then
// finish_backward(); forward() and backward() compose them.
#pragma once

#include "fusedrnn/cells/common.h"

namespace fusedrnn::cells {

struct Lstm {
  static constexpr const char* kName = "lstm";
  static constexpr int kGates = 4;
  static constexpr int kSaved = 4;                // i, f, g, o
  static constexpr bool kCellState = true;        // c, saved as `cells`
  static constexpr bool kSumsProducts = true;     // uses x + hh only: one bias, b_ih + b_hh
  static constexpr bool kReadsHPrev = false;      // h_{t-1} only for zoneout
  static constexpr int kSharedGradGates = 4;      // d(hh) = d(x) for every gate
  static constexpr bool kProjection = true;       // proj_size (w_hr)

  template <typename V>
  using Inputs = CellInputs<V, kGates>;
  template <typename V>
  using Outputs = CellOutputs<V, kSaved>;
  template <typename V>
  using GradInputs = CellGradInputs<V, kSaved>;
  template <typename V>
  using Grads = CellGrads<V, kGates>;

  static constexpr int kOutputGate = 3;           // o, which multiplies tanh(c~)

  // The activated gates (as saved: i, f, g, o) and the candidate cell c~.
  template <typename V>
  struct Gates {
    V saved[kSaved];
    V candidate;
  };

  template <typename V>
  static FUSEDRNN_HD V new_cell(V i, V f, V g, V c_prev, const Clip<V>& cell_clip) {
    return cell_clip(f * c_prev + i * g);
  }

  template <typename V>
  static FUSEDRNN_HD Gates<V> gates(const Inputs<V>& in, const ElementToolkit<V>& tk) {
    Gates<V> a;
    a.saved[0] = fusedrnn::sigmoid(in.x[0] + in.hh[0]);
    a.saved[1] = fusedrnn::sigmoid(in.x[1] + in.hh[1]);
    a.saved[2] = fusedrnn::tanh(in.x[2] + in.hh[2]);
    a.saved[3] = fusedrnn::sigmoid(in.x[3] + in.hh[3]);
    a.candidate = new_cell(a.saved[0], a.saved[1], a.saved[2], in.c_prev, tk.cell_clip);
    return a;
  }

  // c~ again from saved gates (the saved cell is the state after zoneout).
  template <typename V>
  static FUSEDRNN_HD V candidate_from(const V (&saved)[kSaved], V c_prev,
                                      const ElementToolkit<V>& tk) {
    return new_cell(saved[0], saved[1], saved[2], c_prev, tk.cell_clip);
  }

  // y: what enters the output's tanh, c~ (or its layer norm).
  template <typename V>
  static FUSEDRNN_HD Outputs<V> finish(const Gates<V>& a, V y, const Inputs<V>& in,
                                       const ElementToolkit<V>& tk) {
    Outputs<V> out;
    for (int k = 0; k < kSaved; ++k) out.saved[k] = a.saved[k];
    out.h = tk.mix_h(in.h_prev, a.saved[3] * fusedrnn::tanh(y));
    out.c = tk.mix_c(in.c_prev, a.candidate);
    return out;
  }

  template <typename V>
  static FUSEDRNN_HD Outputs<V> forward(const Inputs<V>& in, const ElementToolkit<V>& tk) {
    const Gates<V> a = gates(in, tk);
    return finish(a, a.candidate, in, tk);
  }

  // A finished sequence's row: the state carried, nothing saved.
  template <typename V>
  static FUSEDRNN_HD Outputs<V> carry(const Inputs<V>& in) {
    Outputs<V> out;
    for (int k = 0; k < kSaved; ++k) out.saved[k] = V(0);
    out.h = in.h_prev;
    out.c = in.c_prev;
    return out;
  }

  template <typename V>
  static FUSEDRNN_HD V candidate_of(const GradInputs<V>& in, const ElementToolkit<V>& tk) {
    return tk.zone_c_on ? candidate_from(in.saved, in.c_prev, tk) : in.c;
  }

  // h~ = o tanh(y): the gradients of pre_o and of y, from h_t's.
  template <typename V>
  struct OutputGrads {
    V d_o, d_y;
  };
  template <typename V>
  static FUSEDRNN_HD OutputGrads<V> output_backward(const GradInputs<V>& in, V y,
                                                    const ElementToolkit<V>& tk) {
    const V o = in.saved[3], tanh_y = fusedrnn::tanh(y), dh = tk.to_candidate_h(in.dh);
    return {dh * tanh_y * o * (V(1) - o), dh * o * (V(1) - tanh_y * tanh_y)};
  }

  // The rest, given d_o and the gradient reaching c~ through y (d_y itself,
  // or its layer norm's backward). Where cell_clip clamped c~, nothing passes
  // to the gates or c_{t-1}.
  template <typename V>
  static FUSEDRNN_HD Grads<V> finish_backward(const GradInputs<V>& in, V candidate, V d_o,
                                              V d_candidate_from_y,
                                              const ElementToolkit<V>& tk) {
    const V i = in.saved[0], f = in.saved[1], g = in.saved[2], one(1);
    const V dc = tk.cell_clip.gradient(candidate, d_candidate_from_y + tk.to_candidate_c(in.dc));
    Grads<V> d;
    d.d_x[0] = d.d_hh[0] = dc * g * i * (one - i);
    d.d_x[1] = d.d_hh[1] = dc * in.c_prev * f * (one - f);
    d.d_x[2] = d.d_hh[2] = dc * i * (one - g * g);
    d.d_x[3] = d.d_hh[3] = d_o;
    d.dh_prev = tk.to_previous_h(in.dh);
    d.dc_prev = tk.grad_clip(dc * f + tk.to_previous_c(in.dc));
    return d;
  }

  template <typename V>
  static FUSEDRNN_HD Grads<V> backward(const GradInputs<V>& in, const ElementToolkit<V>& tk) {
    const V candidate = candidate_of(in, tk);
    const OutputGrads<V> out = output_backward(in, candidate, tk);
    return finish_backward(in, candidate, out.d_o, out.d_y, tk);
  }

  // A finished sequence's row: the gradients pass straight through.
  template <typename V>
  static FUSEDRNN_HD Grads<V> carry_grad(const GradInputs<V>& in, const ElementToolkit<V>& tk) {
    Grads<V> d;
    for (int k = 0; k < kGates; ++k) d.d_x[k] = d.d_hh[k] = V(0);
    d.dh_prev = in.dh;
    d.dc_prev = tk.grad_clip(in.dc);
    return d;
  }
};

}  // namespace fusedrnn::cells
