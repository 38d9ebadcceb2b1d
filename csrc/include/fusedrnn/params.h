// Plain structs handed from the layer driver (csrc/layer/) to the kernels:
// sizes and raw pointers only, no ATen types, so the same struct travels to
// a CPU loop, a CUDA launch or a persistent kernel. One set serves every
// cell (cells.h): a field a cell does not use is null.
//
// All buffers are dense, row-major, batch-major within a step: element
// (b, j) of a (B, W) buffer is at b * W + j. P (`h_size`) is the size of h:
// proj_size for a projected LSTM, else the hidden size H. G is the cell's
// gate count and S its saved values per unit (cells/*.h): gate blocks follow
// torch.nn's weight layout (i|f|g|o, r|z|n), each `hidden` wide.
//
// A row b is active at step t when lengths == nullptr or t < lengths[b].
// Inactive rows carry their state unchanged, output zero, save zeros and
// pass gradients straight through.
#pragma once

#include <cstdint>

#include "fusedrnn/cells.h"

namespace fusedrnn {

// fp16/bf16 layers on the CUDA kernels run their GEMMs on 16-bit operands
// (tensor cores, fp32 accumulation) and everything else in fp32: the step
// kernels then also write the next GEMM's operand (h forward, the gate
// gradients backward), rounded to nearest in this type, as raw bits.
enum class HalfType : std::int8_t { none, bf16, fp16 };

// The toolkit (fusedrnn/features.py) as a step kernel reads it; each off
// when null or zero.
template <typename T>
struct StepToolkit {
  const T* zone_h = nullptr;    // (B, P) this step's weight of h_{t-1} (zoneout)
  const T* zone_c = nullptr;    // (B, H) the same for c_{t-1}
  const T* rec_mask = nullptr;  // (B, P) recurrent dropout's mask
  T* h_masked = nullptr;        // (B, P) out: h_t * rec_mask, the next product's operand
  T cell_clip = 0, grad_clip = 0;
};

// The toolkit of element r of a (B, W) buffer, as a cell takes it.
template <typename T>
FUSEDRNN_HD ElementToolkit<T> element_toolkit(const StepToolkit<T>& tk, int64_t r) {
  ElementToolkit<T> e;
  e.zone_h_on = tk.zone_h != nullptr;
  e.zone_c_on = tk.zone_c != nullptr;
  if (e.zone_h_on) e.zone_h = tk.zone_h[r];
  if (e.zone_c_on) e.zone_c = tk.zone_c[r];
  e.cell_clip = Clip<T>::make(tk.cell_clip);
  e.grad_clip = Clip<T>::make(tk.grad_clip);
  return e;
}

// ------------------------------------------------------------ step loops

// One forward step after the recurrent product hh = h_{t-1} @ W_hh^T.
template <typename T>
struct ForwardStep {
  int64_t batch, hidden;
  const T* xproj;          // (B, G*H) input projection of this step, its biases in
  const T* hh;             // (B, G*H) recurrent product (with b_hh, unless below)
  const T* b_hh = nullptr; // (G*H) added to hh here when the GEMM could not, or nullptr
  T* h_state;              // (B, H) running h: h_{t-1} in, h_t out where active;
                           //        nullptr when a projection follows (ProjectedCommit)
  T* c = nullptr;          // (B, H) running cell state (cells with one), in place
  T* saved;                // (B, S*H) for the backward, or nullptr (inference)
  T* cells = nullptr;      // (B, H) saved cell state after the step, or nullptr
  T* h_out;                // (B, H) output slot, zero where inactive (or the
                           //        projection's input)
  const int64_t* lengths;
  int64_t t;
  StepToolkit<T> toolkit;
  std::uint16_t* h_half = nullptr;  // (B, H) h_state in half_type, or nullptr
  HalfType half_type = HalfType::none;
};

// After the projection GEMM of a proj_size LSTM, commits the projected h:
// out = active ? h_new : 0, h_state = active ? h_new : h_state.
template <typename T>
struct ProjectedCommit {
  int64_t batch, h_size;
  const T* h_new;  // (B, P)
  T* out;          // (B, P) output slot of this step
  T* h_state;      // (B, P)
  const int64_t* lengths;
  int64_t t;
  const T* rec_mask;  // (B, P) toolkit, or nullptr
  T* h_masked;        // (B, P)
};

// One backward step. The caller then forms dh_state += d_hh @ W_hh.
template <typename T>
struct BackwardStep {
  int64_t batch, hidden;
  const T* saved;            // (B, S*H) saved by the forward
  const T* cells = nullptr;  // (B, H) saved cell state after this step
  const T* c_prev = nullptr; // (B, H) cell state before it
  const T* h_prev = nullptr; // (B, H) hidden state before it
  const T* dh;               // (B, H) gradient reaching the (unprojected) h_t
  T* dc = nullptr;           // (B, H) in: from the later step; out: to the earlier one
  T* d_xproj;                // (B, G*H) gradient of the input projection
  T* d_hh = nullptr;         // (B, G*H) of the recurrent product, where a cell's
                             //          differs (kSharedGradGates < G); else d_xproj is it
  T* dh_state;               // (B, H) out: what reaches h_{t-1} directly (cells/*.h);
                             //        nullptr for a projected layer (GradHStep's carry)
  const int64_t* lengths;
  int64_t t;
  StepToolkit<T> toolkit;    // grad_clip clamps the dc sent to step t-1
  std::uint16_t* d_xproj_half = nullptr;  // 16-bit copies for the GEMMs, or nullptr
  std::uint16_t* d_hh_half = nullptr;
  HalfType half_type = HalfType::none;
};

// Gradient bookkeeping of the hidden state around one backward step:
//   accumulate: dh_total = dh_state + (active ? grad_out : 0)
//   carry:      dh_state = active ? 0 : dh_total   (a projected layer's, P wide)
template <typename T>
struct GradHStep {
  int64_t batch, h_size;
  const T* grad_out;  // (B, P) gradient of this step's output
  T* dh_state;        // (B, P)
  T* dh_total;        // (B, P)
  const int64_t* lengths;
  int64_t t;
};

// With the toolkit on, the backward step ends with
//   dh_state = clip(dh_state + (rec_mask ? rec_mask * rec : rec))
// where rec = d_hh @ W_hh is the gradient of h_{t-1} through the recurrent
// product (taken by the masked h_{t-1}) and dh_state holds the direct paths.
template <typename T>
struct GradHCombine {
  int64_t batch, h_size;
  const T* rec;       // (B, P)
  const T* rec_mask;  // (B, P) or nullptr
  T* dh_state;        // (B, P)
  T grad_clip;        // 0: off
};

// The hidden state's gradient around one fused backward step (the CUDA
// kernels' one launch per step). The gradient reaching h at step t is
//   dh = dh_carry + dh_gemm + (active ? grad_out : 0),
// dh_gemm being the later step's GEMM (its gradients @ W_hh) and dh_carry
// what passed straight through from it. The kernel leaves in dh_carry what
// passes on to the earlier step; the caller's GEMM then overwrites dh_gemm.
template <typename T>
struct GradFlow {
  const T* grad_out;  // (B, H) gradient of this step's output
  const T* dh_gemm;   // (B, H)
  T* dh_carry;        // (B, H) in and out
};

// ------------------------------------------------------- layer norm
// The toolkit's layer_norm (norm_rows.h): the recurrent product is
// normalised over its G*H vector (cells with a cell state: the candidate cell
// too, over H, before the output's activation), so a step works on whole
// batch rows. The input side, LN_ih(W_ih x) + biases, arrives as xproj.

template <typename T>
struct NormForwardStep {
  int64_t batch, hidden;
  const T* xproj;      // (B, G*H) LN_ih(W_ih x_t) + the projection's biases
  T* hh;               // (B, G*H) in: W_hh h_{t-1}; out: normalised (saved when
                       //          training; zero where inactive)
  const T* hh_weight;  // (G*H) LN_hh's gain and bias
  const T* hh_bias;
  const T* b_hh;       // (G*H) added after the norm (cells taking it), or nullptr
  const T* c_weight;   // (H) LN_c's gain and bias (cells with a cell state)
  const T* c_bias;
  T* c;                // (B, H) cell state, in place
  T* c_norm;           // (B, H) out: the normalised candidate cell
  T* rstd;             // (B, N) saved 1/sigma of each norm, or nullptr (inference)
  T* saved;            // (B, S*H) saved values (scratch in inference)
  T* cells;            // (B, H) saved cell state after the step, or nullptr
  T* h_out;            // (B, H) output slot, zero where inactive
  T* h_state;          // (B, H) running hidden state
  const int64_t* lengths;
  int64_t t;
  StepToolkit<T> toolkit;
};

// One backward step; the caller then forms dh_state += d_hh @ W_hh.
template <typename T>
struct NormBackwardStep {
  int64_t batch, hidden;
  const T* saved;      // (B, S*H)
  const T* hh_norm;    // (B, G*H) saved normalised recurrent product
  const T* c_norm;     // (B, H) saved normalised candidate cell
  const T* rstd;       // (B, N)
  const T* cells;      // (B, H) saved cell state after the step
  const T* c_prev;     // (B, H)
  const T* h_prev;     // (B, H)
  const T* hh_weight;  // (G*H)
  const T* c_weight;   // (H)
  const T* c_bias;     // (H)
  const T* dh;         // (B, H) gradient reaching this step's hidden state
  T* dc;               // (B, H) in: from the later step; out: to the earlier one
  T* d_xproj;          // (B, G*H) gradient of xproj
  T* d_hh_out;         // (B, G*H) gradient of LN_hh's output (+ b_hh)
  T* d_hh;             // (B, G*H) gradient of the recurrent product W_hh h_{t-1}
  T* d_c_norm;         // (B, H) gradient of LN_c's output (for its gain and bias)
  T* dh_state;         // (B, H) out: what reaches h_{t-1} directly
  const int64_t* lengths;
  int64_t t;
  StepToolkit<T> toolkit;
};

// ------------------------------------------------- whole sequences
// For kernels that run every step in one launch (cuda/persistent, and the
// CPU's persistent loops): no projection, no toolkit. The recurrent product
// is inside the kernel, so it sees the weights.

template <typename T>
struct Sequence {
  int64_t steps, batch, hidden;
  bool reverse;
  const T* xproj;   // (T, B, G*H)
  const T* w_hh;    // (G*H, H)
  const T* b_hh;    // (G*H) (cells taking it with the product), or nullptr
  const T* h0;      // (B, H)
  const T* c0;      // (B, H) (cells with a cell state)
  T* output;        // (T, B, H)
  T* h_n;           // (B, H)
  T* c_n;           // (B, H)
  T* saved;         // (T, B, S*H), or nullptr (inference)
  T* cells;         // (T, B, H), or nullptr
  const int64_t* lengths;
};

// The backward of such a layer: fills d_xproj (and d_hh) for every step,
// leaves the gradients of h0 (and c0) in dh (dc).
template <typename T>
struct BackwardSequence {
  int64_t steps, batch, hidden;
  bool reverse;
  const T* w_hh;      // (G*H, H)
  const T* h0;        // (B, H)
  const T* c0;        // (B, H)
  const T* output;    // (T, B, H) saved by the forward (h before each step)
  const T* grad_out;  // (T, B, H)
  const T* saved;     // (T, B, S*H)
  const T* cells;     // (T, B, H)
  T* d_xproj;         // (T, B, G*H) out
  T* d_hh;            // (T, B, (G - kSharedGradGates)*H) out: the recurrent
                      //   product's gradient where it differs from d_xproj's
  T* dh;              // (B, H) in: grad of h_n; out: grad of h0
  T* dc;              // (B, H) in: grad of c_n; out: grad of c0
  const int64_t* lengths;
};

}  // namespace fusedrnn
