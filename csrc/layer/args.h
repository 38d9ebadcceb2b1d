// What one op call is asked to do, read from the op's arguments and checked
// once: the sizes, dtypes, lengths, direction, the path asked for, and the
// toolkit as one sub-struct. Every op of every cell reads its arguments
// here (ops.cpp registers them), so a toolkit field is one entry in
// kToolkitSchema and Toolkit.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/stack.h>

#include <optional>
#include <string>

#include "fusedrnn/params.h"
#include "op_checks.h"

namespace fusedrnn::layer {

using at::Tensor;

// The op arguments of one call, read in schema order from a boxed call's stack.
class ArgReader {
 public:
  ArgReader(torch::jit::Stack& stack, size_t count)
      : args_(torch::jit::last(stack, count)) {}
  Tensor tensor() { return args_[next_++].toTensor(); }
  std::optional<Tensor> optional_tensor() { return args_[next_++].toOptional<Tensor>(); }
  bool boolean() { return args_[next_++].toBool(); }
  double real() { return args_[next_++].toDouble(); }
  std::string text() { return args_[next_++].toStringRef(); }

 private:
  c10::ArrayRef<c10::IValue> args_;
  size_t next_ = 0;
};

// ------------------------------------------------------------- toolkit

// The toolkit's op arguments (fusedrnn/features.py; each off when None or 0),
// the same trailing arguments of every op. The Python side reads their names
// from the schemas.
inline constexpr const char* kToolkitSchema =
    "Tensor? recurrent_mask=None, Tensor? zoneout_h=None, Tensor? zoneout_c=None, "
    "float cell_clip=0., float grad_clip=0.";

// One call's toolkit, checked and in the compute dtype. The persistent paths
// take none of it: with any field on, the step loop runs.
struct Toolkit {
  std::optional<Tensor> recurrent_mask;  // (B, P) multiplies h_{t-1} where it enters W_hh h_{t-1}
  std::optional<Tensor> zoneout_h;       // (T, B, P) the weight d of h_{t-1} in h_t
  std::optional<Tensor> zoneout_c;       // (T, B, H) the same for c (cells with one)
  double cell_clip = 0;                  // c_t clamped to [-v, v] before the output's tanh
  double grad_clip = 0;                  // backward: what a step sends into h_{t-1}, c_{t-1}

  bool any() const {
    return recurrent_mask || zoneout_h || zoneout_c || cell_clip > 0 || grad_clip > 0;
  }
  static Toolkit read(ArgReader& in);

  // The step kernels' view at step t; h_masked is the caller's buffer.
  template <typename T>
  StepToolkit<T> at_step(int64_t t, const Tensor& h_masked) const {
    auto step = [&](const std::optional<Tensor>& seq) -> const T* {
      return seq ? seq->data_ptr<T>() + t * seq->size(1) * seq->size(2) : nullptr;
    };
    return {.zone_h = step(zoneout_h), .zone_c = step(zoneout_c),
            .rec_mask = recurrent_mask ? recurrent_mask->data_ptr<T>() : nullptr,
            .h_masked = h_masked.defined() ? h_masked.data_ptr<T>() : nullptr,
            .cell_clip = static_cast<T>(cell_clip), .grad_clip = static_cast<T>(grad_clip)};
  }
};

// --------------------------------------------------------- the call

// Which path the caller asks for (the op argument `path`): "auto" lets the
// plan decide (plan.h), "persistent" takes the whole-sequence loops where they
// fit, "steps" the step loop.
enum class PathRequest { automatic, persistent, steps };
PathRequest path_request(const checks::OpArgs& check, const std::string& path);

struct LayerArgs {
  const char* op;  // for messages
  int64_t steps, batch, input_size, hidden, h_size;  // h_size: P, proj_size or H
  int gates;                                         // the cell's
  bool projected, reverse;
  bool save;        // forward: save for the backward; backward: the input's gradient
  PathRequest request;
  at::ScalarType dtype, compute;  // the inputs', and the kernels' (fp32 for 16-bit)
  std::optional<Tensor> lengths;  // (B,) int64, contiguous
  Toolkit toolkit;
  Tensor like;                    // the input: device and options
};

// A layer's tensors, as the forward op takes them (LayerInputs) and the
// layer_norm op (NormInputs); what a cell does not take is absent.
struct LayerInputs {
  Tensor x;                                   // (T, B, I)
  Tensor w_ih;                                // (G*H, I)
  std::optional<Tensor> bias;                 // (G*H): b_ih + b_hh, or b_ih (cells taking b_hh)
  Tensor w_hh;                                // (G*H, P)
  std::optional<Tensor> b_hh;                 // (G*H) (cells taking it with the product)
  std::optional<Tensor> w_hr;                 // (P, H) projection
  Tensor h0;                                  // (B, P)
  std::optional<Tensor> c0;                   // (B, H) (cells with a cell state)
};

struct NormInputs {
  Tensor xproj;                               // (T, B, G*H): LN_ih(W_ih x) + biases
  Tensor w_hh;                                // (G*H, H)
  std::optional<Tensor> b_hh;                 // (G*H) (cells taking it with the product)
  Tensor hh_weight, hh_bias;                  // (G*H) LN_hh
  std::optional<Tensor> c_weight, c_bias;     // (H) LN_c (cells with a cell state)
  Tensor h0;                                  // (B, H)
  std::optional<Tensor> c0;
};

// What every op reads after its tensors: lengths, reverse, its flags (a bool:
// save_for_backward or grad_input; the path), then the toolkit, checked
// against the sizes check_layer found.
void read_options(ArgReader& in, const checks::OpArgs& check, bool cell_state, bool has_flag,
                  bool has_path, LayerArgs& a);

// The sizes of a layer from its weights, every tensor checked.
void check_layer(const checks::OpArgs& check, const LayerInputs& in, int gates,
                 bool cell_state, LayerArgs& a);
void check_norm_layer(const checks::OpArgs& check, const NormInputs& in, int gates,
                      bool cell_state, LayerArgs& a);

// A backward op's tensors beyond the forward's inputs: the results' gradients
// and what the forward saved, against the sizes the forward's inputs gave.
void check_backward(const checks::OpArgs& check, const LayerArgs& a, bool cell_state,
                    int saved_per_unit, const Tensor& grad_output, const Tensor& grad_h_n,
                    const std::optional<Tensor>& grad_c_n, const Tensor& output,
                    const Tensor& saved, const std::optional<Tensor>& cells);

}  // namespace fusedrnn::layer
