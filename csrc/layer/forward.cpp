// The forward of one layer in one direction, for every cell.
//
// The input projection of all steps is one GEMM; then, on the step loop, per
// step one GEMM for the recurrent product (ATen, so cuBLAS on the current
// stream on CUDA) and one fused pointwise kernel that applies the cell and
// writes the output, the new state and what the backward needs. The
// persistent paths run every step in one OpenMP team (CPU) or one
// cooperative launch (CUDA).
//
// fp16/bf16 tensors keep state, gates and pointwise math in fp32; the saved
// values are fp32 then, the results in the caller's dtype. With 16-bit GEMM
// operands (plan.h) the step kernels write h in the 16-bit type too.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>

#include <atomic>

#include "cpu/persistent.h"
#include "fusedrnn/persistent.h"
#include "layer/driver.h"
#include "layer/gemms.h"

namespace fusedrnn::layer {

std::atomic<int64_t> g_persistent_fallbacks{0};

int64_t persistent_fallbacks() { return g_persistent_fallbacks.load(); }

// Counts and warns (once) when a persistent CUDA kernel could not take a size.
void note_persistent_fallback(const char* cell, int64_t hidden, int64_t batch) {
  g_persistent_fallbacks.fetch_add(1, std::memory_order_relaxed);
  TORCH_WARN_ONCE("fusedrnn: the persistent ", cell, " kernel cannot run this size on this GPU ",
                  "(hidden ", hidden, ", batch ", batch, "); using the standard kernels");
}

namespace {

// The layer's tensors in the compute dtype, and the buffers the paths fill.
struct ForwardWork {
  Tensor x, w_ih, w_hh, h0;
  std::optional<Tensor> bias, b_hh, w_hr, c0;
  Tensor output, h_state, c, saved, cells;  // c, cells: cells with a cell state
};

template <class Cell>
ForwardWork prepare(const LayerArgs& a, const LayerInputs& in) {
  const auto ct = a.compute;
  ForwardWork w{to_compute(in.x, ct), to_compute(in.w_ih, ct), to_compute(in.w_hh, ct),
                to_compute(in.h0, ct), to_compute(in.bias, ct), to_compute(in.b_hh, ct),
                to_compute(in.w_hr, ct), to_compute(in.c0, ct)};
  const auto opts = w.x.options();
  const int64_t saved_steps = a.save ? a.steps : 0;  // inference saves nothing
  w.output = at::empty({a.steps, a.batch, a.h_size}, opts);
  w.saved = at::empty({saved_steps, a.batch, Cell::kSaved * a.hidden}, opts);
  w.h_state = in.h0.to(ct).clone(at::MemoryFormat::Contiguous);  // h_n, never h0 itself
  if constexpr (Cell::kCellState) {
    w.cells = at::empty({saved_steps, a.batch, a.hidden}, opts);
    w.c = in.c0->to(ct).clone(at::MemoryFormat::Contiguous);
  }
  return w;
}

template <typename T>
T* saved_or_null(const Tensor& seq, int64_t t) {
  return seq.defined() ? saved_at<T>(seq, t) : nullptr;
}

template <typename T>
Sequence<T> sequence(const LayerArgs& a, const ForwardWork& w, const T* xproj) {
  return {.steps = a.steps, .batch = a.batch, .hidden = a.hidden, .reverse = a.reverse,
          .xproj = xproj, .w_hh = w.w_hh.data_ptr<T>(), .b_hh = data_or_null<T>(w.b_hh),
          .h0 = w.h0.data_ptr<T>(), .c0 = data_or_null<T>(w.c), .output = w.output.data_ptr<T>(),
          .h_n = w.h_state.data_ptr<T>(), .c_n = data_or_null<T>(w.c),
          .saved = saved_or_null<T>(w.saved, 0), .cells = saved_or_null<T>(w.cells, 0),
          .lengths = data_or_null<int64_t>(a.lengths)};
}

// The CPU loops compute the input projection themselves, a chunk at a time.
template <class Cell, typename T>
void cpu_persistent_forward(const LayerArgs& a, const ForwardWork& w) {
  if constexpr (kCpuKernels)
    cpu::persistent_forward<Cell, T>(
        sequence<T>(a, w, nullptr),
        {.input_size = a.input_size, .x = w.x.data_ptr<T>(), .w_ih = w.w_ih.data_ptr<T>(),
         .bias = data_or_null<T>(w.bias)});
}

// False, having run nothing, when the kernel cannot take this size.
template <class Cell, typename T>
bool cuda_persistent_forward(const LayerArgs& a, const ForwardWork& w, const Tensor& xproj) {
  if (a.steps == 0 || a.batch == 0 || a.hidden == 0) return false;  // the step loop's
#ifdef FUSEDRNN_CUDA_KERNELS
  if (cuda::persistent::forward<Cell, T>(sequence<T>(a, w, xproj.data_ptr<T>()))) return true;
  note_persistent_fallback(Cell::kName, a.hidden, a.batch);
#endif
  return false;
}

// A projected LSTM's step: h = W_hr h~, committed where the row is active.
template <typename T>
struct Projection {
  StepProduct product;
  Tensor h_raw, h_proj;  // (B, H) the cell's h~; (B, P) its projection
};

template <class Cell, typename T>
void step_loop_forward(const LayerArgs& a, const Plan& plan, const LayerInputs& in,
                       ForwardWork& w, const Tensor& xproj) {
  const bool half = plan.gemms == Gemms::half_operands;
  const int64_t B = a.batch, H = a.hidden;
  const auto opts = xproj.options();
  Tensor hh = at::empty({B, Cell::kGates * H}, opts);
  // The 16-bit copy of h the next step's GEMM reads (its first value is h0 itself).
  Tensor h_half = half ? in.h0.clone(at::MemoryFormat::Contiguous) : Tensor();
  const auto kernels = cell_kernels_for<Cell, T>(xproj);
  const auto state = state_kernels_for<T>(xproj);
  const StepProduct recurrent_product(half ? in.w_hh : w.w_hh, a.steps, B);
  std::optional<Projection<T>> projection;
  if (a.projected)
    projection.emplace(Projection<T>{StepProduct(*w.w_hr, a.steps, B), at::empty({B, H}, opts),
                                     at::empty({B, a.h_size}, opts)});
  // Recurrent dropout: the product takes h * mask, which the step kernels keep
  // up to date in h_masked next to h_state.
  const auto& mask = a.toolkit.recurrent_mask;
  Tensor h_masked = mask ? w.h_state * *mask : Tensor();
  const Tensor& operand = mask ? h_masked : w.h_state;
  const int64_t* lens = data_or_null<int64_t>(a.lengths);
  for (int64_t s = 0; s < a.steps; ++s) {
    const int64_t t = step_time(s, a.steps, a.reverse);
    if (half)
      mm_f32_out(hh, h_half, recurrent_product.transposed());  // b_hh is the kernel's then
    else
      recurrent_product(hh, operand, w.b_hh);
    T* out_t = at_step<T>(w.output, t);
    // With a projection, the commit applies the mask (to the projected h).
    StepToolkit<T> tk = a.toolkit.at_step<T>(t, projection ? Tensor() : h_masked);
    if (projection) tk.rec_mask = nullptr;
    kernels.forward({.batch = B, .hidden = H, .xproj = at_step<T>(xproj, t),
                     .hh = hh.data_ptr<T>(), .b_hh = half ? data_or_null<T>(w.b_hh) : nullptr,
                     .h_state = projection ? nullptr : w.h_state.data_ptr<T>(),
                     .c = data_or_null<T>(w.c), .saved = saved_or_null<T>(w.saved, t),
                     .cells = saved_or_null<T>(w.cells, t),
                     .h_out = projection ? projection->h_raw.template data_ptr<T>() : out_t,
                     .lengths = lens, .t = t, .toolkit = tk, .h_half = half_bits(h_half),
                     .half_type = half_type_of(a.dtype)});
    if (!projection) continue;
    projection->product(projection->h_proj, projection->h_raw);
    state.projected_commit({.batch = B, .h_size = a.h_size,
                            .h_new = projection->h_proj.template data_ptr<T>(), .out = out_t,
                            .h_state = w.h_state.data_ptr<T>(), .lengths = lens, .t = t,
                            .rec_mask = data_or_null<T>(mask),
                            .h_masked = data_or_null<T>(h_masked)});
  }
}

}  // namespace

template <class Cell>
ForwardResult forward(const LayerArgs& a, const LayerInputs& in, const Plan& plan) {
  const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  c10::OptionalDeviceGuard guard(in.x.device());
  ForwardWork w = prepare<Cell>(a, in);
  AT_DISPATCH_FLOATING_TYPES(a.compute, "fusedrnn::forward", [&] {
    if (plan.path == Path::cpu_persistent) return cpu_persistent_forward<Cell, scalar_t>(a, w);
    const Tensor xproj = plan.gemms == Gemms::half_operands
                             ? input_projection_half(in.x, in.w_ih, w.bias)
                             : input_projection(w.x, w.w_ih, w.bias);
    if (plan.path == Path::cuda_persistent && cuda_persistent_forward<Cell, scalar_t>(a, w, xproj))
      return;
    step_loop_forward<Cell, scalar_t>(a, plan, in, w, xproj);
  });
  ForwardResult result{w.output.to(a.dtype), w.h_state.to(a.dtype), Tensor(), w.saved, w.cells};
  if constexpr (Cell::kCellState) result.c_n = w.c.to(a.dtype);
  return result;
}

#define FUSEDRNN_INSTANTIATE(Cell) \
  template ForwardResult forward<Cell>(const LayerArgs&, const LayerInputs&, const Plan&);
FUSEDRNN_FOR_EACH_CELL(FUSEDRNN_INSTANTIATE)
#undef FUSEDRNN_INSTANTIATE

}  // namespace fusedrnn::layer
