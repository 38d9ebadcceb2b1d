// Operator schemas (namespace fusedrnn) and their CPU/CUDA registrations,
// generated for every cell of FUSEDRNN_FOR_EACH_CELL (cells.h) from its
// traits, so a new cell needs no line here.
//
// The unit every op works on is one layer in one direction; layers,
// directions, dropout and packing are composed in Python (fusedrnn/ops.py,
// fusedrnn/modules.py). Autograd and fake (meta) kernels are registered in
// fusedrnn/registration.py with torch.library, so the ops trace under
// torch.compile. Per cell (name: lstm, gru, rnn_tanh, rnn_relu):
//
//   <cell>_forward(<tensors>, Tensor? lengths, bool reverse, bool save_for_backward=True,
//                  str path="auto", <toolkit>) -> (<results>, <saved>)
//   <cell>_backward(<results' gradients>, <tensors>, Tensor output, <saved>,
//                   Tensor? lengths, bool reverse, bool grad_input=True, str path="auto",
//                   <toolkit>) -> (the gradient of each of <tensors>)
//   <cell>_norm_forward / <cell>_norm_backward: the same for layer_norm (below)
//   fusedrnn_debug::<cell>_plan(<the forward's arguments>, bool backward=False) -> str:
//                  the path a call runs and why (layer/plan.h)
//   fusedrnn_debug::cpu_persistent_threads, cpu_tiles_taken_over: the CPU
//                  persistent loop's threads (cpu/step_team.h), for tests
//
//   input    (T, B, I)    the layer's input, time-major
//   w_ih     (G*H, I)     input weights; G the cell's gates (4 LSTM, 3 GRU, 1 RNN)
//   bias     (G*H)        LSTM, RNN: b_ih + b_hh, or None
//   b_ih, b_hh (G*H)      GRU: the two biases (b_hh enters inside r * (.)), or None
//   w_hh     (G*H, P)     recurrent weights; P = proj_size or H
//   w_hr     (P, H)       LSTM projection weights, or None
//   h0, c0   (B, P), (B, H)      c0: the LSTM's
//   lengths  (B,) int64   per-sequence lengths on the input's device, or None:
//                         steps t >= lengths[b] carry the state, output zero
//   reverse               run the steps from T-1 down to 0
//   path                  "auto" (layer/plan.h decides), "persistent" (the
//                         whole-sequence loops where they fit) or "steps"
//   grad_input            whether the backward computes the input's gradient
//   results  output (T, B, P), h_n (B, P), c_n (B, H)
//   saved    gates (T, B, S*H): the cell's saved values (cells/*.h), cells
//            (T, B, H): the LSTM's cell states; in the compute dtype (fp32 for
//            fp16/bf16 inputs); with save_for_backward=false (inference) they
//            come back with zero steps and are never written.
//
// The toolkit (layer/args.h, kToolkitSchema; fusedrnn/features.py; each off
// when None or 0; the persistent paths take none of them, so the step loop
// runs when one is on):
//   recurrent_mask (B, P)  recurrent dropout: multiplies h_{t-1} where it enters
//                          W_hh h_{t-1} only (one mask for every step)
//   zoneout_h   (T, B, P)  zoneout: the weight d of h_{t-1} in
//                          h_t = d h_{t-1} + (1 - d) h~_t (0/1 draws, or z in eval)
//   zoneout_c   (T, B, H)  LSTM: the same for the cell state
//   cell_clip              LSTM: c_t clamped to [-cell_clip, cell_clip] before tanh
//   grad_clip              backward: what step t sends back into h_{t-1} (and
//                          c_{t-1}) clamped to [-grad_clip, grad_clip]
//
// layer_norm's ops take the layer's input side already computed, xproj
// (T, B, G*H) = LN_ih(W_ih x) + the projection's biases, and run the
// recurrence with hh_weight, hh_bias (G*H) (LN_hh's gain and bias, on
// W_hh h_{t-1}; GRU: b_hh after it) and, LSTM, c_weight, c_bias (H) (LN_c's,
// on the candidate cell before tanh). They also save the normalised recurrent
// product (hh_norm), cell (c_norm) and the norms' 1/sigma (rstd); no path.
//
// The SIMT build (FUSEDRNN_SIMT: the module fusedrnn._simt, csrc/simt/)
// compiles the layer driver with the CUDA kernel sources run on the CPU, and
// registers the same ops for CPU tensors under fusedrnn_simt (debug ops under
// fusedrnn_simt_debug), so both builds load side by side.
#include <Python.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "cpu/persistent.h"
#include "cpu/step_team.h"
#include "fusedrnn/persistent.h"
#include "fusedrnn/step_kernels.h"
#include "layer/driver.h"
#include "layer/steps.h"
#include "op_schemas.h"

#ifdef FUSEDRNN_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace fusedrnn {
namespace {

using layer::ArgReader;
using torch::jit::Stack;

// ------------------------------------------------------------ kernels

template <class Cell>
void forward_op(const c10::OperatorHandle& op, Stack* stack) {
  static const std::string name = std::string(Cell::kName) + "_forward";
  const size_t count = op.schema().arguments().size();
  ArgReader in(*stack, count);
  const layer::LayerInputs inputs = schemas::read_inputs<Cell>(in);
  const layer::LayerArgs a = schemas::layer_args<Cell>(name.c_str(), inputs, in, true);
  const layer::Plan plan = layer::plan_for(a, layer::Direction::forward);
  const layer::ForwardResult r = layer::forward<Cell>(a, inputs, plan);
  torch::jit::drop(*stack, count);
  schemas::push_results<Cell>(*stack, r);
}

template <class Cell>
void backward_op(const c10::OperatorHandle& op, Stack* stack) {
  static const std::string name = std::string(Cell::kName) + "_backward";
  const size_t count = op.schema().arguments().size();
  ArgReader in(*stack, count);
  const layer::BackwardInputs grads = schemas::read_result_grads<Cell>(in);
  const layer::LayerInputs inputs = schemas::read_inputs<Cell>(in);
  const layer::BackwardInputs g = schemas::read_saved<Cell>(in, grads);
  const layer::LayerArgs a = schemas::layer_args<Cell>(name.c_str(), inputs, in, true);
  schemas::check_backward<Cell>(name.c_str(), a, g);
  const layer::Plan plan = layer::plan_for(a, layer::Direction::backward);
  const layer::LayerGrads result = layer::backward<Cell>(a, inputs, g, plan);
  torch::jit::drop(*stack, count);
  schemas::push_grads<Cell>(*stack, result, inputs);
}

template <class Cell>
void norm_forward_op(const c10::OperatorHandle& op, Stack* stack) {
  static const std::string name = std::string(Cell::kName) + "_norm_forward";
  const size_t count = op.schema().arguments().size();
  ArgReader in(*stack, count);
  const layer::NormInputs inputs = schemas::read_norm_inputs<Cell>(in);
  const layer::LayerArgs a = schemas::norm_args<Cell>(name.c_str(), inputs, in, true);
  const layer::NormResult r = layer::norm_forward<Cell>(a, inputs);
  torch::jit::drop(*stack, count);
  schemas::push_norm_results<Cell>(*stack, r);
}

template <class Cell>
void norm_backward_op(const c10::OperatorHandle& op, Stack* stack) {
  static const std::string name = std::string(Cell::kName) + "_norm_backward";
  const size_t count = op.schema().arguments().size();
  ArgReader in(*stack, count);
  const layer::BackwardInputs grads = schemas::read_result_grads<Cell>(in);
  const layer::NormInputs inputs = schemas::read_norm_inputs<Cell>(in);
  const layer::NormBackwardInputs g = schemas::read_norm_saved<Cell>(in, grads);
  const layer::LayerArgs a = schemas::norm_args<Cell>(name.c_str(), inputs, in, false);
  schemas::check_norm_backward<Cell>(name.c_str(), a, g);
  const layer::NormGrads result = layer::norm_backward<Cell>(a, inputs, g);
  torch::jit::drop(*stack, count);
  schemas::push_norm_grads<Cell>(*stack, result, inputs);
}

// The plan of a forward call (or its backward), as text.
template <class Cell>
void plan_op(const c10::OperatorHandle& op, Stack* stack) {
  static const std::string name = std::string(Cell::kName) + "_plan";
  const size_t count = op.schema().arguments().size();
  ArgReader in(*stack, count);
  const layer::LayerInputs inputs = schemas::read_inputs<Cell>(in);
  const layer::LayerArgs a = schemas::layer_args<Cell>(name.c_str(), inputs, in, true);
  const bool backward = in.boolean();
  const layer::Plan plan =
      layer::plan_for(a, backward ? layer::Direction::backward : layer::Direction::forward);
  torch::jit::drop(*stack, count);
  torch::jit::push(*stack, layer::describe(plan));
}

// ----------------------------------------------------- registration

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
#define FUSEDRNN_DEFINE(Cell) schemas::define_cell_ops<Cell>(m);
  FUSEDRNN_FOR_EACH_CELL(FUSEDRNN_DEFINE)
#undef FUSEDRNN_DEFINE
  m.def("build_info() -> str", &build_info);
}

template <class Cell>
void impl_cell_ops(torch::Library& m) {
  const std::string name = Cell::kName;
  auto impl = [&](const char* op, torch::CppFunction kernel) {
    m.impl((name + op).c_str(), std::move(kernel));  // the name is parsed (copied) here
  };
  impl("_forward", torch::CppFunction::makeFromBoxedFunction<&forward_op<Cell>>());
  impl("_backward", torch::CppFunction::makeFromBoxedFunction<&backward_op<Cell>>());
  impl("_norm_forward", torch::CppFunction::makeFromBoxedFunction<&norm_forward_op<Cell>>());
  impl("_norm_backward", torch::CppFunction::makeFromBoxedFunction<&norm_backward_op<Cell>>());
}

void impl_ops(torch::Library& m) {
#define FUSEDRNN_IMPL(Cell) impl_cell_ops<Cell>(m);
  FUSEDRNN_FOR_EACH_CELL(FUSEDRNN_IMPL)
#undef FUSEDRNN_IMPL
}

// A cell's layout, for the fake kernels (fusedrnn/registration.py): [gates,
// saved values per unit, whether it has a cell state].
template <class Cell>
std::vector<int64_t> layout() {
  return {Cell::kGates, Cell::kSaved, Cell::kCellState ? 1 : 0};
}

void define_plan_ops(torch::Library& m) {
#define FUSEDRNN_PLAN(Cell)                                                                \
  m.def(torch::schema(schemas::plan_schema<Cell>().c_str()),                               \
        torch::CppFunction::makeFromBoxedFunction<&plan_op<Cell>>());                      \
  m.def((std::string(Cell::kName) + "_layout() -> int[]").c_str(), &layout<Cell>);
  FUSEDRNN_FOR_EACH_CELL(FUSEDRNN_PLAN)
#undef FUSEDRNN_PLAN
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
  m.def("persistent_fallbacks() -> int", &layer::persistent_fallbacks);
}
#endif

}  // namespace

#ifdef FUSEDRNN_SIMT
TORCH_LIBRARY(fusedrnn_simt, m) { define_ops(m); }
TORCH_LIBRARY_IMPL(fusedrnn_simt, CPU, m) { impl_ops(m); }
TORCH_LIBRARY_FRAGMENT(fusedrnn_simt_debug, m) {
  define_persistent_debug_ops(m);
  define_plan_ops(m);
}
#else
TORCH_LIBRARY(fusedrnn, m) { define_ops(m); }
TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) { impl_ops(m); }

TORCH_LIBRARY(fusedrnn_debug, m) {
  m.def("cpu_persistent_threads(int steps, int batch, int hidden, int gates) -> int",
        [](int64_t steps, int64_t batch, int64_t hidden, int64_t gates) {
          return static_cast<int64_t>(cpu::persistent_threads(steps, batch, hidden, gates));
        });
  m.def("cpu_tiles_taken_over() -> int", [] { return cpu::tiles_taken_over(); });
  define_plan_ops(m);
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
