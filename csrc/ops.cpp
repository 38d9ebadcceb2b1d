// Operator schemas (namespace fusedrnn) and their CPU/CUDA registrations.
//
// The unit every op works on is one layer in one direction; layers,
// directions, dropout and packing are composed in Python (fusedrnn/ops.py,
// fusedrnn/modules.py). Autograd and fake (meta) kernels are registered in
// fusedrnn/ops.py with torch.library, so the ops trace under torch.compile.
//
//   xproj    (T, B, G*H)  input projection of all steps: x @ W_ih^T + b_ih
//                         (+ b_hh for LSTM; GRU takes b_hh separately)
//   w_hh     (G*H, P)     recurrent weights; P = proj_size or H
//   w_hr     (P, H)       LSTM projection weights, or None
//   h0, c0   (B, P), (B, H)
//   lengths  (B,) int64   per-sequence lengths on the input's device, or None:
//                         steps t >= lengths[b] carry the state, output zero
//   reverse               run the steps from T-1 down to 0
//
// The forward ops also return what the backward needs: the activated gates
// (LSTM i|f|g|o; GRU r|z|n|W_hn h + b_hn) and the LSTM cell states, in the
// compute dtype (fp32 for fp16/bf16 inputs); with save_for_backward=false
// (inference) these come back with zero steps and are never written.
#include <Python.h>
#include <torch/library.h>

#include "fusedrnn/kernels.h"
#include "fusedrnn/persistent.h"
#include "recurrence.h"

#ifdef FUSEDRNN_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace fusedrnn {
namespace {

std::string build_info() {
  std::string info = std::string("cpu:") + cpu::simd_name();
#ifdef FUSEDRNN_WITH_CUDA
  info += " cuda:" + std::to_string(CUDART_VERSION);
#endif
  return info;
}

// Microseconds for `steps` grid barriers with no work (the persistent
// kernels' per-step synchronisation cost), on the current CUDA device.
double persistent_barrier_us(int64_t steps, int64_t blocks) {
#ifdef FUSEDRNN_WITH_CUDA
  return cuda::persistent::barrier_microbench(steps, blocks);
#else
  TORCH_CHECK(false, "fusedrnn: this build has no CUDA kernels");
#endif
}

}  // namespace

TORCH_LIBRARY(fusedrnn, m) {
  m.def(
      "lstm_forward(Tensor xproj, Tensor w_hh, Tensor? w_hr, Tensor h0, Tensor c0, "
      "Tensor? lengths, bool reverse, bool save_for_backward=True) -> (Tensor output, "
      "Tensor h_n, Tensor c_n, "
      "Tensor gates, Tensor cells)");
  m.def(
      "lstm_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor w_hh, "
      "Tensor? w_hr, Tensor h0, Tensor c0, Tensor output, Tensor gates, Tensor cells, "
      "Tensor? lengths, bool reverse) -> (Tensor grad_xproj, Tensor grad_w_hh, "
      "Tensor grad_w_hr, Tensor grad_h0, Tensor grad_c0)");
  m.def(
      "gru_forward(Tensor xproj, Tensor w_hh, Tensor? b_hh, Tensor h0, Tensor? lengths, "
      "bool reverse, bool save_for_backward=True) -> (Tensor output, Tensor h_n, "
      "Tensor gates)");
  m.def(
      "gru_backward(Tensor grad_output, Tensor grad_h_n, Tensor w_hh, Tensor h0, "
      "Tensor output, Tensor gates, Tensor? lengths, bool reverse) -> (Tensor grad_xproj, "
      "Tensor grad_w_hh, Tensor grad_b_hh, Tensor grad_h0)");
  m.def("build_info() -> str", &build_info);
  m.def("persistent_barrier_us(int steps, int blocks) -> float", &persistent_barrier_us);
}

TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) {
  m.impl("lstm_forward", &lstm_forward);
  m.impl("lstm_backward", &lstm_backward);
  m.impl("gru_forward", &gru_forward);
  m.impl("gru_backward", &gru_backward);
}

#ifdef FUSEDRNN_WITH_CUDA
TORCH_LIBRARY_IMPL(fusedrnn, CUDA, m) {
  m.impl("lstm_forward", &lstm_forward);
  m.impl("lstm_backward", &lstm_backward);
  m.impl("gru_forward", &gru_forward);
  m.impl("gru_backward", &gru_backward);
}
#endif

}  // namespace fusedrnn

// `import fusedrnn._C` loads the library, which registers the ops above.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
