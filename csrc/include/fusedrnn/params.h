// Plain structs handed from the orchestration (recurrence.cpp) to the
// kernels: sizes and raw pointers only, no ATen types, so the same struct
// travels to a CPU loop, a CUDA launch or a persistent kernel.
//
// All buffers are dense, row-major, batch-major within a step: element
// (b, j) of a (B, W) buffer is at b * W + j. P (`h_size`) is the size of h:
// proj_size for a projected LSTM, else the hidden size H. Gate blocks follow torch.nn's
// weight layout (i|f|g|o for LSTM, r|z|n for GRU), each `hidden` wide.
//
// A row b is active at step t when lengths == nullptr or t < lengths[b].
// Inactive rows carry their state unchanged, output zero, save zero gates
// and pass gradients straight through.
//
// The toolkit fields (fusedrnn/features.py; csrc/ops.cpp documents them) are
// off when null or zero; a step kernel reads them per element:
//   zone_*    (B, W) this step's weight d of the previous state (zoneout)
//   rec_mask  (B, P) recurrent dropout mask; h_masked receives h_t * rec_mask,
//             the operand of the next step's recurrent product
//   cell_clip / grad_clip: the limits (cells.h, Clip)
#pragma once

#include <cstdint>

#include "fusedrnn/cells.h"

namespace fusedrnn {

// fp16/bf16 layers on the CUDA kernels run their GEMMs on 16-bit operands
// (tensor cores, fp32 accumulation) and everything else in fp32: the step
// kernels then also write the next GEMM's operand (h forward, the gate
// gradients backward), rounded to nearest in this type, as raw bits.
enum class HalfType : std::int8_t { none, bf16, fp16 };

FUSEDRNN_HD bool row_active(const int64_t* lengths, int64_t t, int64_t b) {
  return lengths == nullptr || t < lengths[b];
}

// ---------------------------------------------------------------- LSTM

// One forward step after the recurrent product hh = h_prev @ W_hh^T.
template <typename T>
struct LstmForwardStep {
  int64_t batch, hidden;
  const T* xproj;  // (B, 4H) input projection of this step, both biases in
  const T* hh;     // (B, 4H) recurrent product
  T* c;            // (B, H) cell state, updated in place
  T* gates;        // (B, 4H) saved activated gates, or nullptr (inference)
  T* cells;        // (B, H) saved cell state after the step (carried if
                   //        inactive), or nullptr (inference)
  T* h_out;        // (B, H) new hidden state, zero where inactive (the output
                   //        slot, or the input of the projection GEMM)
  T* h_state;      // (B, H) running hidden state, updated where active;
                   //        nullptr when a projection follows (see ProjectedCommit)
  const int64_t* lengths;
  int64_t t;
  T cell_clip;        // toolkit (see the top of this file)
  const T* zone_h;    // (B, H); needs h_state (no projection)
  const T* zone_c;    // (B, H)
  const T* rec_mask;  // (B, H); with a projection ProjectedCommit applies it
  T* h_masked;        // (B, H)
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

// One backward step. The caller then forms dh_state += d_gates @ W_hh.
template <typename T>
struct LstmBackwardStep {
  int64_t batch, hidden;
  const T* gates;   // (B, 4H) saved activated gates
  const T* cells;   // (B, H) saved cell state of this step
  const T* c_prev;  // (B, H) cell state before this step
  const T* dh;      // (B, H) gradient reaching the unprojected hidden state
  T* dc;            // (B, H) in: from the later step; out: to the earlier one
  T* d_gates;       // (B, 4H) gradient of the pre-activations (0 if inactive)
  const int64_t* lengths;
  int64_t t;
  T cell_clip, grad_clip;   // toolkit; grad_clip clamps the dc sent to step t-1
  const T* zone_h;          // (B, H): dh reaches h~_t scaled by 1 - d
  const T* zone_c;          // (B, H): then c~_t is recomputed from c_prev
  std::uint16_t* d_gates_half = nullptr;  // (B, 4H) d_gates in half_type, or nullptr
  HalfType half_type = HalfType::none;
};

// Gradient bookkeeping of the hidden state around one backward step:
//   accumulate: dh_total = dh_state + (active ? grad_out : 0)
//   carry:      dh_state = active ? (zone ? zone * dh_total : 0) : dh_total
//               (before dh_state += dG @ W)
template <typename T>
struct GradHStep {
  int64_t batch, h_size;
  const T* grad_out;  // (B, P) gradient of this step's output
  T* dh_state;        // (B, P)
  T* dh_total;        // (B, P)
  const int64_t* lengths;
  int64_t t;
  const T* zone;      // (B, P) carry only: zoneout's weight of h_{t-1}, or nullptr
};

// With the toolkit on, the backward step ends with
//   dh_state = clip(dh_state + (rec_mask ? rec_mask * rec : rec))
// where rec = d_gates @ W_hh is the gradient of h_{t-1} through the recurrent
// product (taken by the masked h_{t-1}) and dh_state holds the direct paths
// (zoneout, GRU's z * dh, inactive rows' carry).
template <typename T>
struct GradHCombine {
  int64_t batch, h_size;
  const T* rec;       // (B, P)
  const T* rec_mask;  // (B, P) or nullptr
  T* dh_state;        // (B, P)
  T grad_clip;        // 0: off
};

// ----------------------------------------------------------------- GRU

template <typename T>
struct GruForwardStep {
  int64_t batch, hidden;
  const T* xproj;  // (B, 3H) input projection, b_ih in
  const T* hh;     // (B, 3H) recurrent product, b_hh in
  T* h_state;      // (B, H) hidden state, updated in place where active
  T* gates;        // (B, 4H) saved r | z | n | hh_n (zero where inactive),
                   //        or nullptr (inference)
  T* h_out;        // (B, H) output slot, zero where inactive
  const int64_t* lengths;
  int64_t t;
  const T* zone_h;    // (B, H) toolkit, or nullptr
  const T* rec_mask;  // (B, H)
  T* h_masked;        // (B, H)
  const T* b_hh = nullptr;          // (3H) added to hh here when the GEMM could not, or nullptr
  std::uint16_t* h_half = nullptr;  // (B, H) h_state in half_type, or nullptr
  HalfType half_type = HalfType::none;
};

// One backward step. The caller then forms dh_state += d_hh @ W_hh.
template <typename T>
struct GruBackwardStep {
  int64_t batch, hidden;
  const T* gates;   // (B, 4H) saved r | z | n | hh_n
  const T* h_prev;  // (B, H) hidden state before this step
  const T* dh;      // (B, H) total gradient reaching this step's hidden state
  T* d_xproj;       // (B, 3H) gradient of the input projection
  T* d_hh;          // (B, 3H) gradient of the recurrent product (b_hh included)
  T* dh_state;      // (B, H) out: z * dh where active, dh where inactive
  const int64_t* lengths;
  int64_t t;
  const T* zone_h;  // (B, H) toolkit: dh reaches h~_t scaled by 1 - d, h_{t-1} by d
  std::uint16_t* d_xproj_half = nullptr;  // (B, 3H) d_xproj in half_type, or nullptr
  std::uint16_t* d_hh_half = nullptr;     // (B, 3H) d_hh in half_type, or nullptr
  HalfType half_type = HalfType::none;
};

// The hidden state's gradient around one fused backward step (the CUDA
// kernels' one launch per step). The gradient reaching h at step t is
//   dh = dh_carry + dh_gemm + (active ? grad_out : 0),
// dh_gemm being the later step's GEMM (its gate gradients @ W_hh) and
// dh_carry what passed straight through from it. The kernel leaves in
// dh_carry what passes on to the earlier step (LSTM: active ? 0 : dh; GRU:
// active ? z * dh : dh); the caller's GEMM then overwrites dh_gemm.
template <typename T>
struct GradFlow {
  const T* grad_out;  // (B, H) gradient of this step's output
  const T* dh_gemm;   // (B, H)
  T* dh_carry;        // (B, H) in and out
};

// ------------------------------------------------------- layer norm
// The toolkit's layer_norm (fusedrnn/features.py): the recurrent product is
// normalised over its G*H gate vector (LSTM: and the candidate cell state
// over H before the output's tanh), so a step works on whole batch rows.
// The input side, LN_ih(W_ih x) + biases, is computed for every step before
// the loop and arrives as xproj. Inactive rows as above; the toolkit fields
// as in LstmForwardStep / LstmBackwardStep.

template <typename T>
struct LstmNormForwardStep {
  int64_t batch, hidden;
  const T* xproj;      // (B, 4H) LN_ih(W_ih x_t) + b_ih + b_hh
  T* hh;               // (B, 4H) in: W_hh h_{t-1}; out: normalised (the saved
                       //         step when training, zero where inactive)
  const T* hh_weight;  // (4H) LN_hh's gain and bias
  const T* hh_bias;
  const T* c_weight;   // (H) LN_c's gain and bias
  const T* c_bias;
  T* c;                // (B, H) cell state, updated in place
  T* c_norm;           // (B, H) out: the normalised candidate cell (saved when
                       //         training, scratch otherwise)
  T* rstd;             // (B, 2) saved 1/sigma of the recurrent product and of
                       //        the candidate cell, or nullptr (inference)
  T* gates;            // (B, 4H) activated gates (saved when training, scratch
                       //         otherwise)
  T* cells;            // (B, H) saved cell state after the step, or nullptr
  T* h_out;            // (B, H) output slot, zero where inactive
  T* h_state;          // (B, H) running hidden state
  const int64_t* lengths;
  int64_t t;
  T cell_clip;
  const T* zone_h;
  const T* zone_c;
  const T* rec_mask;
  T* h_masked;
};

// One backward step; the caller then forms dh_state += d_hh @ W_hh.
template <typename T>
struct LstmNormBackwardStep {
  int64_t batch, hidden;
  const T* gates;      // (B, 4H) saved activated gates
  const T* hh_norm;    // (B, 4H) saved normalised recurrent product
  const T* c_norm;     // (B, H) saved normalised candidate cell
  const T* rstd;       // (B, 2) saved
  const T* c_prev;     // (B, H) cell state before this step
  const T* hh_weight;  // (4H)
  const T* c_weight;   // (H)
  const T* c_bias;     // (H)
  const T* dh;         // (B, H) gradient reaching this step's hidden state
  T* dc;               // (B, H) in: from the later step; out: to the earlier one
  T* d_gates;          // (B, 4H) gradient of the gate pre-activations: that
                       //         of xproj and of LN_hh's output (0 if inactive)
  T* d_hh;             // (B, 4H) gradient of the recurrent product W_hh h_{t-1}
  T* d_c_norm;         // (B, H) gradient of LN_c's output (for its gain and bias)
  const int64_t* lengths;
  int64_t t;
  T cell_clip, grad_clip;
  const T* zone_h;
  const T* zone_c;
};

template <typename T>
struct GruNormForwardStep {
  int64_t batch, hidden;
  const T* xproj;      // (B, 3H) LN_ih(W_ih x_t) + b_ih
  T* hh;               // (B, 3H) in: W_hh h_{t-1}; out: normalised, as the LSTM's
  const T* hh_weight;  // (3H) LN_hh's gain and bias
  const T* hh_bias;
  const T* b_hh;       // (3H) added after the norm, or nullptr
  T* rstd;             // (B) saved 1/sigma of the recurrent product, or nullptr
  T* gates;            // (B, 4H) saved r | z | n | hh_n, or nullptr
  T* h_out;            // (B, H) output slot, zero where inactive
  T* h_state;          // (B, H) hidden state, updated in place where active
  const int64_t* lengths;
  int64_t t;
  const T* zone_h;
  const T* rec_mask;
  T* h_masked;
};

// One backward step; the caller then forms dh_state += d_hh @ W_hh.
template <typename T>
struct GruNormBackwardStep {
  int64_t batch, hidden;
  const T* gates;      // (B, 4H) saved r | z | n | hh_n
  const T* hh_norm;    // (B, 3H) saved normalised recurrent product
  const T* rstd;       // (B) saved
  const T* hh_weight;  // (3H)
  const T* h_prev;     // (B, H) hidden state before this step
  const T* dh;         // (B, H) gradient reaching this step's hidden state
  T* d_xproj;          // (B, 3H) gradient of xproj
  T* d_hh_out;         // (B, 3H) gradient of LN_hh's output (+ b_hh)
  T* d_hh;             // (B, 3H) gradient of the recurrent product W_hh h_{t-1}
  T* dh_state;         // (B, H) out: the direct paths to h_{t-1} (z * dh; zoneout; dh where inactive)
  const int64_t* lengths;
  int64_t t;
  const T* zone_h;
};

// ------------------------------------------------- whole sequences
// For kernels that run every step in one launch (cuda/persistent, and the
// CPU's persistent loops). The recurrent product is inside the kernel, so it
// sees the weights.

template <typename T>
struct LstmSequence {
  int64_t steps, batch, hidden;  // no projection (proj_size = 0)
  bool reverse;
  const T* xproj;  // (T, B, 4H)
  const T* w_hh;   // (4H, H)
  const T* h0;     // (B, H)
  const T* c0;     // (B, H)
  T* output;       // (T, B, H)
  T* h_n;          // (B, H)
  T* c_n;          // (B, H)
  T* gates;        // (T, B, 4H), or nullptr (inference)
  T* cells;        // (T, B, H), or nullptr (inference)
  const int64_t* lengths;
};

// Backward of one LSTM layer without projection (the forward's LstmSequence
// with the gradients): fills d_gates for every step, leaves the gradients of
// h0 and c0 in dh / dc. For the persistent CPU loops and CUDA kernels.
template <typename T>
struct LstmBackwardSequence {
  int64_t steps, batch, hidden;
  bool reverse;
  const T* w_hh;      // (4H, H)
  const T* c0;        // (B, H)
  const T* grad_out;  // (T, B, H)
  const T* gates;     // (T, B, 4H) saved by the forward
  const T* cells;     // (T, B, H) saved by the forward
  T* d_gates;         // (T, B, 4H) out
  T* dh;              // (B, H) in: grad of h_n; out: grad of h0
  T* dc;              // (B, H) in: grad of c_n; out: grad of c0
  const int64_t* lengths;
};

template <typename T>
struct GruSequence {
  int64_t steps, batch, hidden;
  bool reverse;
  const T* xproj;  // (T, B, 3H)
  const T* w_hh;   // (3H, H)
  const T* b_hh;   // (3H) or nullptr
  const T* h0;     // (B, H)
  T* output;       // (T, B, H)
  T* h_n;          // (B, H)
  T* gates;        // (T, B, 4H), or nullptr (inference)
  const int64_t* lengths;
};

// Backward of one GRU layer: fills d_xproj and d_hh for every step, leaves
// the gradient of h0 in dh. d_hh holds only the n part of the recurrent
// product's gradient: its r and z parts are d_xproj's.
template <typename T>
struct GruBackwardSequence {
  int64_t steps, batch, hidden;
  bool reverse;
  const T* w_hh;      // (3H, H)
  const T* h0;        // (B, H)
  const T* output;    // (T, B, H) saved by the forward
  const T* grad_out;  // (T, B, H)
  const T* gates;     // (T, B, 4H) saved by the forward
  T* d_xproj;         // (T, B, 3H) out
  T* d_hh;            // (T, B, H) out
  T* dh;              // (B, H) in: grad of h_n; out: grad of h0
  const int64_t* lengths;
};

}  // namespace fusedrnn
