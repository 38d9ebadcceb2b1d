// Operator schemas (namespace fusedrnn) and their CPU/CUDA registrations.
//
// The unit every op works on is one layer in one direction; layers,
// directions, dropout and packing are composed in Python (fusedrnn/ops.py,
// fusedrnn/modules.py). Autograd and fake (meta) kernels are registered in
// fusedrnn/ops.py with torch.library, so the ops trace under torch.compile.
//
//   input    (T, B, I)    the layer's input, time-major
//   w_ih     (G*H, I)     input weights; G = 4 gates for LSTM, 3 for GRU
//   bias     (4H)         LSTM: b_ih + b_hh, or None
//   b_ih, b_hh (3H)       GRU: the two biases (b_hh enters inside r * (.)), or None
//   w_hh     (G*H, P)     recurrent weights; P = proj_size or H
//   w_hr     (P, H)       LSTM projection weights, or None
//   h0, c0   (B, P), (B, H)
//   lengths  (B,) int64   per-sequence lengths on the input's device, or None:
//                         steps t >= lengths[b] carry the state, output zero
//   reverse               run the steps from T-1 down to 0
//   persistent            run the whole-sequence loops where they fit: the
//                         persistent CPU loop (LSTM and GRU) or the CUDA
//                         kernels; the choice is made in Python
//   grad_input            whether the backward computes the input's gradient
//
// The toolkit (fusedrnn/features.py; each off when None or 0; the persistent
// paths take none of them, so the step loop runs when one is on):
//   recurrent_mask (B, P)  recurrent dropout: multiplies h_{t-1} where it enters
//                          W_hh h_{t-1} only (one mask for every step)
//   zoneout_h   (T, B, P)  zoneout: the weight d of h_{t-1} in
//                          h_t = d h_{t-1} + (1 - d) h~_t (0/1 draws, or z in eval)
//   zoneout_c   (T, B, H)  LSTM: the same for the cell state
//   cell_clip              LSTM: c_t clamped to [-cell_clip, cell_clip] before tanh
//   grad_clip              backward: what step t sends back into h_{t-1} (and
//                          c_{t-1}) clamped to [-grad_clip, grad_clip]
//
// layer_norm (the toolkit) has ops of its own, *_norm_forward/backward: they
// take the layer's input side already computed, xproj (T, B, G*H) =
// LN_ih(W_ih x) + b_ih (+ b_hh for LSTM), and run the recurrence with
//   hh_weight, hh_bias (G*H)  LN_hh's gain and bias, on W_hh h_{t-1}
//   c_weight, c_bias (H)      LSTM: LN_c's, on the candidate cell before tanh
// and the toolkit arguments above (no projection, no persistent path). They
// also save the normalised recurrent product (hh_norm), cell (c_norm) and the
// norms' 1/sigma (rstd); the backward returns xproj's gradient.
//
// The forward ops also return what the backward needs: the activated gates
// (LSTM i|f|g|o; GRU r|z|n|W_hn h + b_hn) and the LSTM cell states, in the
// compute dtype (fp32 for fp16/bf16 inputs); with save_for_backward=false
// (inference) these come back with zero steps and are never written.
//
// Namespace fusedrnn_debug holds what is not a model op: the persistent
// loops' thread plan, the CUDA kernels' planning bound, tiling plan and
// override, and the grid-barrier micro-benchmark.
//
// The SIMT build (FUSEDRNN_SIMT: the module fusedrnn._simt, csrc/simt/)
// compiles this file and recurrence.cpp with the CUDA kernel sources run on
// the CPU, and registers the same ops for CPU tensors under fusedrnn_simt
// (debug ops under fusedrnn_simt_debug), so both builds load side by side.
#include <Python.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "cpu/persistent.h"
#include "fusedrnn/persistent.h"
#include "fusedrnn/step_kernels.h"
#include "recurrence.h"

#ifdef FUSEDRNN_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#if defined(FUSEDRNN_WITH_CUDA) || defined(FUSEDRNN_SIMT)
#define FUSEDRNN_CUDA_KERNELS 1
#endif

namespace fusedrnn {
namespace {

// The one place that reports how this library was built.
std::string build_info() {
#ifdef FUSEDRNN_SIMT
  return "simt: the CUDA kernel sources on the CPU";
#else
  std::string info = std::string("cpu:") + cpu::simd_name();
#ifdef FUSEDRNN_WITH_CUDA
  info += " cuda:" + std::to_string(CUDART_VERSION);
#endif
  return info;
#endif
}

void define_ops(torch::Library& m) {
  m.def(
      "lstm_forward(Tensor input, Tensor w_ih, Tensor? bias, Tensor w_hh, Tensor? w_hr, "
      "Tensor h0, Tensor c0, Tensor? lengths, bool reverse, bool save_for_backward=True, "
      "bool persistent=False, Tensor? recurrent_mask=None, Tensor? zoneout_h=None, "
      "Tensor? zoneout_c=None, float cell_clip=0., float grad_clip=0.) -> "
      "(Tensor output, Tensor h_n, Tensor c_n, Tensor gates, Tensor cells)");
  m.def(
      "lstm_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor input, "
      "Tensor w_ih, Tensor w_hh, Tensor? w_hr, Tensor h0, Tensor c0, Tensor output, "
      "Tensor gates, Tensor cells, Tensor? lengths, bool reverse, bool grad_input=True, "
      "bool persistent=False, Tensor? recurrent_mask=None, Tensor? zoneout_h=None, "
      "Tensor? zoneout_c=None, float cell_clip=0., float grad_clip=0.) -> "
      "(Tensor grad_input, Tensor grad_w_ih, Tensor grad_bias, Tensor grad_w_hh, "
      "Tensor grad_w_hr, Tensor grad_h0, Tensor grad_c0)");
  m.def(
      "gru_forward(Tensor input, Tensor w_ih, Tensor? b_ih, Tensor w_hh, Tensor? b_hh, "
      "Tensor h0, Tensor? lengths, bool reverse, bool save_for_backward=True, "
      "bool persistent=False, Tensor? recurrent_mask=None, Tensor? zoneout_h=None, "
      "float grad_clip=0.) -> (Tensor output, Tensor h_n, Tensor gates)");
  m.def(
      "gru_backward(Tensor grad_output, Tensor grad_h_n, Tensor input, Tensor w_ih, "
      "Tensor w_hh, Tensor h0, Tensor output, Tensor gates, Tensor? lengths, bool reverse, "
      "bool grad_input=True, bool persistent=False, Tensor? recurrent_mask=None, "
      "Tensor? zoneout_h=None, float grad_clip=0.) -> (Tensor grad_input, Tensor grad_w_ih, "
      "Tensor grad_b_ih, "
      "Tensor grad_w_hh, Tensor grad_b_hh, Tensor grad_h0)");
  m.def(
      "lstm_norm_forward(Tensor xproj, Tensor w_hh, Tensor hh_weight, Tensor hh_bias, "
      "Tensor c_weight, Tensor c_bias, Tensor h0, Tensor c0, Tensor? lengths, bool reverse, "
      "bool save_for_backward=True, Tensor? recurrent_mask=None, Tensor? zoneout_h=None, "
      "Tensor? zoneout_c=None, float cell_clip=0., float grad_clip=0.) -> "
      "(Tensor output, Tensor h_n, Tensor c_n, Tensor gates, Tensor cells, Tensor hh_norm, "
      "Tensor c_norm, Tensor rstd)");
  m.def(
      "lstm_norm_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor w_hh, "
      "Tensor hh_weight, Tensor c_weight, Tensor c_bias, Tensor h0, Tensor c0, Tensor output, "
      "Tensor gates, Tensor cells, Tensor hh_norm, Tensor c_norm, Tensor rstd, Tensor? lengths, "
      "bool reverse, Tensor? recurrent_mask=None, Tensor? zoneout_h=None, "
      "Tensor? zoneout_c=None, float cell_clip=0., float grad_clip=0.) -> "
      "(Tensor grad_xproj, Tensor grad_w_hh, Tensor grad_hh_weight, Tensor grad_hh_bias, "
      "Tensor grad_c_weight, Tensor grad_c_bias, Tensor grad_h0, Tensor grad_c0)");
  m.def(
      "gru_norm_forward(Tensor xproj, Tensor w_hh, Tensor? b_hh, Tensor hh_weight, "
      "Tensor hh_bias, Tensor h0, Tensor? lengths, bool reverse, bool save_for_backward=True, "
      "Tensor? recurrent_mask=None, Tensor? zoneout_h=None, float grad_clip=0.) -> "
      "(Tensor output, Tensor h_n, Tensor gates, Tensor hh_norm, Tensor rstd)");
  m.def(
      "gru_norm_backward(Tensor grad_output, Tensor grad_h_n, Tensor w_hh, Tensor hh_weight, "
      "Tensor h0, Tensor output, Tensor gates, Tensor hh_norm, Tensor rstd, Tensor? lengths, "
      "bool reverse, Tensor? recurrent_mask=None, Tensor? zoneout_h=None, "
      "float grad_clip=0.) -> (Tensor grad_xproj, Tensor grad_w_hh, Tensor grad_b_hh, "
      "Tensor grad_hh_weight, Tensor grad_hh_bias, Tensor grad_h0)");
  m.def("build_info() -> str", &build_info);
}

void impl_ops(torch::Library& m) {
  m.impl("lstm_forward", &lstm_forward);
  m.impl("lstm_backward", &lstm_backward);
  m.impl("gru_forward", &gru_forward);
  m.impl("gru_backward", &gru_backward);
  m.impl("lstm_norm_forward", &lstm_norm_forward);
  m.impl("lstm_norm_backward", &lstm_norm_backward);
  m.impl("gru_norm_forward", &gru_norm_forward);
  m.impl("gru_norm_backward", &gru_norm_backward);
}

#ifdef FUSEDRNN_CUDA_KERNELS
// Microseconds for `steps` grid barriers with no work (the persistent
// kernels' per-step synchronisation cost), on the current CUDA device.
double persistent_barrier_us(int64_t steps, int64_t blocks) {
  return cuda::persistent::barrier_microbench(steps, blocks);
}

// Largest hidden size the persistent kernels take on the current device.
int64_t persistent_max_hidden(at::ScalarType dtype, int64_t gates) {
  const int num_gates = static_cast<int>(gates);
  if (dtype == at::kDouble) return cuda::persistent::max_hidden<double>(num_gates);
  return cuda::persistent::max_hidden<float>(num_gates);  // fp16/bf16 run in fp32
}

// The tiling a persistent launch of this size would use: [units per block,
// batch tile, blocks, shared bytes per block]; zeros when it does not fit.
std::vector<int64_t> persistent_plan(at::ScalarType dtype, int64_t gates, int64_t hidden,
                                     int64_t batch) {
  const int num_gates = static_cast<int>(gates);
  const cuda::persistent::Plan plan =
      dtype == at::kDouble ? cuda::persistent::plan_for<double>(hidden, batch, num_gates)
                           : cuda::persistent::plan_for<float>(hidden, batch, num_gates);
  return {plan.units, plan.batch_tile, plan.blocks, plan.shared_bytes};
}

// Caps the persistent kernels' grid and forces their batch tile (0: the
// plan's own choice), so tests reach multi-unit blocks, a partial last block
// and several batch tiles at small sizes. Process-wide, until reset.
void set_persistent_tiling(int64_t max_blocks, int64_t batch_tile) {
  cuda::persistent::set_tiling_override({.max_blocks = max_blocks, .batch_tile = batch_tile});
}

void define_persistent_debug_ops(torch::Library& m) {
  m.def("persistent_barrier_us(int steps, int blocks) -> float", &persistent_barrier_us);
  m.def("persistent_max_hidden(ScalarType dtype, int gates) -> int", &persistent_max_hidden);
  m.def("set_persistent_tiling(int max_blocks, int batch_tile) -> ()", &set_persistent_tiling);
  m.def("persistent_plan(ScalarType dtype, int gates, int hidden, int batch) -> int[]",
        &persistent_plan);
  m.def("persistent_fallbacks() -> int", &persistent_fallbacks);
}
#endif

}  // namespace

#ifdef FUSEDRNN_SIMT
TORCH_LIBRARY(fusedrnn_simt, m) { define_ops(m); }
TORCH_LIBRARY_IMPL(fusedrnn_simt, CPU, m) { impl_ops(m); }
TORCH_LIBRARY_FRAGMENT(fusedrnn_simt_debug, m) { define_persistent_debug_ops(m); }
#else
TORCH_LIBRARY(fusedrnn, m) { define_ops(m); }
TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) { impl_ops(m); }

TORCH_LIBRARY(fusedrnn_debug, m) {
  m.def("cpu_persistent_threads(int steps, int batch, int hidden, int gates) -> int",
        [](int64_t steps, int64_t batch, int64_t hidden, int64_t gates) {
          return static_cast<int64_t>(cpu::persistent_threads(steps, batch, hidden, gates));
        });
#ifdef FUSEDRNN_WITH_CUDA
  define_persistent_debug_ops(m);
#endif
}

#ifdef FUSEDRNN_WITH_CUDA
TORCH_LIBRARY_IMPL(fusedrnn, CUDA, m) { impl_ops(m); }
#endif
#endif

}  // namespace fusedrnn

// Importing the module loads the library, which registers the ops above.
#ifdef FUSEDRNN_SIMT
PyMODINIT_FUNC PyInit__simt(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_simt", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
#else
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
#endif
