#include "layer/args.h"

#include "layer/steps.h"

#include <cmath>

namespace fusedrnn::layer {

using checks::OpArgs;

Toolkit Toolkit::read(ArgReader& in) {
  Toolkit tk;
  tk.recurrent_mask = in.optional_tensor();
  tk.zoneout_h = in.optional_tensor();
  tk.zoneout_c = in.optional_tensor();
  tk.cell_clip = in.real();
  tk.grad_clip = in.real();
  return tk;
}

PathRequest path_request(const OpArgs& check, const std::string& path) {
  if (path == "auto") return PathRequest::automatic;
  if (path == "persistent") return PathRequest::persistent;
  if (path == "steps") return PathRequest::steps;
  check.fail("path must be \"auto\", \"persistent\" or \"steps\", got \"" + path + "\"");
}

namespace {

// The toolkit's tensors against the layer's sizes, in the compute dtype.
void check_toolkit(const OpArgs& check, bool cell_state, LayerArgs& a) {
  Toolkit& tk = a.toolkit;
  auto check_limit = [&](double limit, const char* name) {
    if (!(limit >= 0) || std::isinf(limit))
      check.fail(std::string(name) + " must be finite and >= 0 (0: off), got " + c10::str(limit));
  };
  check_limit(tk.cell_clip, "cell_clip");
  check_limit(tk.grad_clip, "grad_clip");
  if (!cell_state && (tk.zoneout_c || tk.cell_clip > 0))
    check.fail("zoneout_c and cell_clip act on a cell state, which this cell has not");
  if (tk.recurrent_mask)
    check.tensor(*tk.recurrent_mask, "recurrent_mask", {a.batch, a.h_size}, a.dtype);
  if (tk.zoneout_h) check.tensor(*tk.zoneout_h, "zoneout_h", {a.steps, a.batch, a.h_size}, a.dtype);
  if (tk.zoneout_c) check.tensor(*tk.zoneout_c, "zoneout_c", {a.steps, a.batch, a.hidden}, a.dtype);
  if (a.projected && (tk.zoneout_h || tk.zoneout_c))
    check.fail("zoneout with a projection (w_hr) is not implemented");
  tk.recurrent_mask = to_compute(tk.recurrent_mask, a.compute);
  tk.zoneout_h = to_compute(tk.zoneout_h, a.compute);
  tk.zoneout_c = to_compute(tk.zoneout_c, a.compute);
}

// The shared part of both layer checks: the sequence and its dtype.
void start(const OpArgs& check, const Tensor& seq, const char* name, LayerArgs& a) {
  check.sequence(seq, name);
  check.supported_dtype(seq, name);
  a.steps = seq.size(0);
  a.batch = seq.size(1);
  a.dtype = seq.scalar_type();
  a.compute = checks::compute_dtype_for(a.dtype);
  a.like = seq;
}

void check_states(const OpArgs& check, const Tensor& h0, const std::optional<Tensor>& c0,
                  bool cell_state, const LayerArgs& a) {
  check.tensor(h0, "h0", {a.batch, a.h_size}, a.dtype);
  if (cell_state) {
    TORCH_INTERNAL_ASSERT(c0.has_value());
    check.tensor(*c0, "c0", {a.batch, a.hidden}, a.dtype);
  }
}

}  // namespace

void check_layer(const OpArgs& check, const LayerInputs& in, int gates, bool cell_state,
                 LayerArgs& a) {
  start(check, in.x, "input", a);
  a.input_size = in.x.size(2);
  a.gates = gates;
  if (in.w_ih.dim() != 2 || in.w_ih.size(0) % gates != 0)
    check.fail("w_ih must be a (" + std::to_string(gates) + "H, I) matrix, got shape " +
               c10::str(in.w_ih.sizes()));
  a.hidden = in.w_ih.size(0) / gates;
  a.projected = in.w_hr.has_value();
  a.h_size = a.projected ? in.w_hr->size(0) : a.hidden;
  const int64_t rows = gates * a.hidden;
  check.tensor(in.w_ih, "w_ih", {rows, a.input_size}, a.dtype);
  check.tensor(in.w_hh, "w_hh", {rows, a.h_size}, a.dtype);
  if (in.bias) check.tensor(*in.bias, "bias", {rows}, a.dtype);
  if (in.b_hh) check.tensor(*in.b_hh, "b_hh", {rows}, a.dtype);
  if (a.projected) check.tensor(*in.w_hr, "w_hr", {a.h_size, a.hidden}, a.dtype);
  check_states(check, in.h0, in.c0, cell_state, a);
}

void check_norm_layer(const OpArgs& check, const NormInputs& in, int gates, bool cell_state,
                      LayerArgs& a) {
  start(check, in.xproj, "xproj", a);
  if (in.xproj.size(2) % gates != 0)
    check.fail("xproj's last dimension must be " + std::to_string(gates) + "H, got shape " +
               c10::str(in.xproj.sizes()));
  a.gates = gates;
  a.hidden = a.h_size = in.xproj.size(2) / gates;
  a.input_size = 0;
  a.projected = false;
  const int64_t rows = gates * a.hidden;
  check.tensor(in.w_hh, "w_hh", {rows, a.hidden}, a.dtype);
  if (in.b_hh) check.tensor(*in.b_hh, "b_hh", {rows}, a.dtype);
  check.tensor(in.hh_weight, "hh_weight", {rows}, a.dtype);
  check.tensor(in.hh_bias, "hh_bias", {rows}, a.dtype);
  if (cell_state) {
    check.tensor(*in.c_weight, "c_weight", {a.hidden}, a.dtype);
    check.tensor(*in.c_bias, "c_bias", {a.hidden}, a.dtype);
  }
  check_states(check, in.h0, in.c0, cell_state, a);
}

void read_options(ArgReader& in, const OpArgs& check, bool cell_state, bool has_flag,
                  bool has_path, LayerArgs& a) {
  a.lengths = check.lengths(in.optional_tensor(), a.batch);
  a.reverse = in.boolean();
  a.save = has_flag ? in.boolean() : true;
  a.request = has_path ? path_request(check, in.text()) : PathRequest::steps;
  a.toolkit = Toolkit::read(in);
  check_toolkit(check, cell_state, a);
}

void check_backward(const OpArgs& check, const LayerArgs& a, bool cell_state, int saved_per_unit,
                    const Tensor& grad_output, const Tensor& grad_h_n,
                    const std::optional<Tensor>& grad_c_n, const Tensor& output,
                    const Tensor& saved, const std::optional<Tensor>& cells) {
  check.tensor(grad_output, "grad_output", {a.steps, a.batch, a.h_size}, a.dtype);
  check.tensor(grad_h_n, "grad_h_n", {a.batch, a.h_size}, a.dtype);
  check.tensor(output, "output", {a.steps, a.batch, a.h_size}, a.dtype);
  // Saved in the compute dtype; a forward called with save_for_backward=False
  // saved no steps, and its backward cannot run.
  if (saved.dim() == 3 && saved.size(0) == 0 && a.steps > 0)
    check.fail("backward through a forward op called with save_for_backward=False; call it "
               "with True to train");
  check.tensor(saved, "gates", {a.steps, a.batch, saved_per_unit * a.hidden}, a.compute);
  if (cell_state) {
    check.tensor(*grad_c_n, "grad_c_n", {a.batch, a.hidden}, a.dtype);
    check.tensor(*cells, "cells", {a.steps, a.batch, a.hidden}, a.compute);
  }
}

}  // namespace fusedrnn::layer
