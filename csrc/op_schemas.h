// The op schemas of a cell, written from its traits (cells/*.h), and the
// reading and writing of a boxed call's stack in the same order: one table
// of tensor arguments per op family, used both ways, so the text and the
// parsing cannot drift apart. ops.cpp documents the ops.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "layer/args.h"
#include "layer/driver.h"

namespace fusedrnn::schemas {

using layer::LayerArgs;
using layer::Tensor;

// One tensor argument: its name, whether it may be None, where it goes in the
// inputs (a required member, or an optional one) and where its gradient is.
template <class Inputs, class Grads>
struct TensorField {
  const char* name;
  bool optional;
  Tensor Inputs::*tensor;                 // or nullptr, and then:
  std::optional<Tensor> Inputs::*maybe;   // (a cell's c0: required, held optional)
  Tensor Grads::*grad;
};
using LayerField = TensorField<layer::LayerInputs, layer::LayerGrads>;
using NormField = TensorField<layer::NormInputs, layer::NormGrads>;

template <class Cell>
const std::vector<LayerField>& layer_fields() {
  using I = layer::LayerInputs;
  using G = layer::LayerGrads;
  static const std::vector<LayerField> fields = [] {
    std::vector<LayerField> f = {
        {"input", false, &I::x, nullptr, &G::x},
        {"w_ih", false, &I::w_ih, nullptr, &G::w_ih},
        {Cell::kSumsProducts ? "bias" : "b_ih", true, nullptr, &I::bias, &G::bias},
        {"w_hh", false, &I::w_hh, nullptr, &G::w_hh}};
    if (!Cell::kSumsProducts) f.push_back({"b_hh", true, nullptr, &I::b_hh, &G::b_hh});
    if (Cell::kProjection) f.push_back({"w_hr", true, nullptr, &I::w_hr, &G::w_hr});
    f.push_back({"h0", false, &I::h0, nullptr, &G::h0});
    if (Cell::kCellState) f.push_back({"c0", false, nullptr, &I::c0, &G::c0});
    return f;
  }();
  return fields;
}

template <class Cell>
const std::vector<NormField>& norm_fields() {
  using I = layer::NormInputs;
  using G = layer::NormGrads;
  static const std::vector<NormField> fields = [] {
    std::vector<NormField> f = {{"xproj", false, &I::xproj, nullptr, &G::xproj},
                                {"w_hh", false, &I::w_hh, nullptr, &G::w_hh}};
    if (!Cell::kSumsProducts) f.push_back({"b_hh", true, nullptr, &I::b_hh, &G::b_hh});
    f.push_back({"hh_weight", false, &I::hh_weight, nullptr, &G::hh_weight});
    f.push_back({"hh_bias", false, &I::hh_bias, nullptr, &G::hh_bias});
    if (Cell::kCellState) {
      f.push_back({"c_weight", false, nullptr, &I::c_weight, &G::c_weight});
      f.push_back({"c_bias", false, nullptr, &I::c_bias, &G::c_bias});
    }
    f.push_back({"h0", false, &I::h0, nullptr, &G::h0});
    if (Cell::kCellState) f.push_back({"c0", false, nullptr, &I::c0, &G::c0});
    return f;
  }();
  return fields;
}

// The results' and the saved tensors' names, in the forward's return order.
template <class Cell>
std::vector<std::string> result_names() {
  if (Cell::kCellState) return {"output", "h_n", "c_n"};
  return {"output", "h_n"};
}
template <class Cell>
std::vector<std::string> saved_names(bool norm) {
  std::vector<std::string> names = {"gates"};
  if (Cell::kCellState) names.push_back("cells");
  if (norm) {
    names.push_back("hh_norm");
    if (Cell::kCellState) names.push_back("c_norm");
    names.push_back("rstd");
  }
  return names;
}

// ------------------------------------------------------------- text

inline std::string joined(const std::vector<std::string>& parts, const std::string& prefix) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : ", ") + prefix + p;
  return out;
}

template <class Field>
std::string tensor_args(const std::vector<Field>& fields, const std::string& prefix = "") {
  std::string out;
  for (const Field& f : fields)
    out += (out.empty() ? "" : ", ") + std::string(f.optional && prefix.empty() ? "Tensor? " : "Tensor ") +
           prefix + f.name;
  return out;
}

template <class Cell>
std::string forward_arguments() {
  return tensor_args(layer_fields<Cell>()) +
         ", Tensor? lengths, bool reverse, bool save_for_backward=True, str path=\"auto\", " +
         layer::kToolkitSchema;
}

template <class Cell>
std::string results_text(bool norm) {
  return "(" + joined(result_names<Cell>(), "Tensor ") + ", " +
         joined(saved_names<Cell>(norm), "Tensor ") + ")";
}

template <class Field>
std::string grads_text(const std::vector<Field>& fields) {
  return "(" + tensor_args(fields, "grad_") + ")";
}

template <class Cell>
std::string grad_arguments() {
  return joined(result_names<Cell>(), "Tensor grad_");
}

template <class Cell>
std::string plan_schema() {
  return std::string(Cell::kName) + "_plan(" + forward_arguments<Cell>() +
         ", bool backward=False) -> str";
}

template <class Cell>
void define_cell_ops(torch::Library& m) {
  const std::string name = Cell::kName, toolkit = layer::kToolkitSchema;
  auto def = [&](const std::string& text) { m.def(torch::schema(text.c_str())); };
  def(name + "_forward(" + forward_arguments<Cell>() + ") -> " + results_text<Cell>(false));
  def(name + "_backward(" + grad_arguments<Cell>() + ", " + tensor_args(layer_fields<Cell>()) +
        ", Tensor output, " + joined(saved_names<Cell>(false), "Tensor ") +
        ", Tensor? lengths, bool reverse, bool grad_input=True, str path=\"auto\", " + toolkit +
        ") -> " + grads_text(layer_fields<Cell>()));
  def(name + "_norm_forward(" + tensor_args(norm_fields<Cell>()) +
        ", Tensor? lengths, bool reverse, bool save_for_backward=True, " + toolkit + ") -> " +
        results_text<Cell>(true));
  def(name + "_norm_backward(" + grad_arguments<Cell>() + ", " +
        tensor_args(norm_fields<Cell>()) + ", Tensor output, " +
        joined(saved_names<Cell>(true), "Tensor ") + ", Tensor? lengths, bool reverse, " +
        toolkit + ") -> " + grads_text(norm_fields<Cell>()));
}

// ------------------------------------------------------------ reading

template <class Inputs, class Field>
Inputs read_fields(layer::ArgReader& in, const std::vector<Field>& fields) {
  Inputs inputs;
  for (const Field& f : fields) {
    if (f.tensor != nullptr)
      inputs.*f.tensor = in.tensor();
    else
      inputs.*f.maybe = f.optional ? in.optional_tensor() : std::optional<Tensor>(in.tensor());
  }
  return inputs;
}

template <class Cell>
layer::LayerInputs read_inputs(layer::ArgReader& in) {
  return read_fields<layer::LayerInputs>(in, layer_fields<Cell>());
}

template <class Cell>
layer::NormInputs read_norm_inputs(layer::ArgReader& in) {
  return read_fields<layer::NormInputs>(in, norm_fields<Cell>());
}

template <class Cell>
layer::BackwardInputs read_result_grads(layer::ArgReader& in) {
  layer::BackwardInputs g;
  g.grad_output = in.tensor();
  g.grad_h_n = in.tensor();
  if constexpr (Cell::kCellState) g.grad_c_n = in.tensor();
  return g;
}

template <class Cell>
layer::BackwardInputs read_saved(layer::ArgReader& in, layer::BackwardInputs g) {
  g.output = in.tensor();
  g.saved = in.tensor();
  if constexpr (Cell::kCellState) g.cells = in.tensor();
  return g;
}

template <class Cell>
layer::NormBackwardInputs read_norm_saved(layer::ArgReader& in, const layer::BackwardInputs& g) {
  layer::NormBackwardInputs n{read_saved<Cell>(in, g)};
  n.hh_norm = in.tensor();
  if constexpr (Cell::kCellState) n.c_norm = in.tensor();
  n.rstd = in.tensor();
  return n;
}

// The call's sizes and options, every argument checked.
template <class Cell>
LayerArgs layer_args(const char* op, const layer::LayerInputs& inputs, layer::ArgReader& in,
                     bool has_flag) {
  const checks::OpArgs check(op, inputs.x);
  LayerArgs a;
  a.op = op;
  layer::check_layer(check, inputs, Cell::kGates, Cell::kCellState, a);
  layer::read_options(in, check, Cell::kCellState, has_flag, /*has_path=*/true, a);
  return a;
}

template <class Cell>
LayerArgs norm_args(const char* op, const layer::NormInputs& inputs, layer::ArgReader& in,
                    bool has_flag) {
  const checks::OpArgs check(op, inputs.xproj);
  LayerArgs a;
  a.op = op;
  layer::check_norm_layer(check, inputs, Cell::kGates, Cell::kCellState, a);
  layer::read_options(in, check, Cell::kCellState, has_flag, /*has_path=*/false, a);
  return a;
}

template <class Cell>
void check_backward(const char* op, const LayerArgs& a, const layer::BackwardInputs& g) {
  const checks::OpArgs check(op, a.like);
  layer::check_backward(check, a, Cell::kCellState, Cell::kSaved, g.grad_output, g.grad_h_n,
                        g.grad_c_n, g.output, g.saved, g.cells);
}

template <class Cell>
void check_norm_backward(const char* op, const LayerArgs& a, const layer::NormBackwardInputs& g) {
  check_backward<Cell>(op, a, g.layer);
  const checks::OpArgs check(op, a.like);
  check.tensor(g.hh_norm, "hh_norm", {a.steps, a.batch, Cell::kGates * a.hidden}, a.compute);
  check.tensor(g.rstd, "rstd", {a.steps, a.batch, Cell::kCellState ? 2 : 1}, a.compute);
  if (Cell::kCellState) check.tensor(*g.c_norm, "c_norm", {a.steps, a.batch, a.hidden}, a.compute);
}

// ------------------------------------------------------------ writing

template <class Cell>
void push_results(torch::jit::Stack& stack, const layer::ForwardResult& r) {
  torch::jit::push(stack, r.output, r.h_n);
  if constexpr (Cell::kCellState) torch::jit::push(stack, r.c_n);
  torch::jit::push(stack, r.saved);
  if constexpr (Cell::kCellState) torch::jit::push(stack, r.cells);
}

template <class Cell>
void push_norm_results(torch::jit::Stack& stack, const layer::NormResult& r) {
  push_results<Cell>(stack, r.layer);
  torch::jit::push(stack, r.hh_norm);
  if constexpr (Cell::kCellState) torch::jit::push(stack, r.c_norm);
  torch::jit::push(stack, r.rstd);
}

// Each input's gradient in order; an empty tensor for an input given as None.
template <class Inputs, class Grads, class Field>
void push_field_grads(torch::jit::Stack& stack, const Grads& grads, const Inputs& inputs,
                      const std::vector<Field>& fields, const Tensor& like) {
  for (const Field& f : fields) {
    const bool given = f.tensor != nullptr || (inputs.*f.maybe).has_value();
    const Tensor& grad = grads.*f.grad;
    torch::jit::push(stack, given && grad.defined() ? grad : at::empty({0}, like.options()));
  }
}

template <class Cell>
void push_grads(torch::jit::Stack& stack, const layer::LayerGrads& grads,
                const layer::LayerInputs& inputs) {
  push_field_grads(stack, grads, inputs, layer_fields<Cell>(), inputs.x);
}

template <class Cell>
void push_norm_grads(torch::jit::Stack& stack, const layer::NormGrads& grads,
                     const layer::NormInputs& inputs) {
  push_field_grads(stack, grads, inputs, norm_fields<Cell>(), inputs.xproj);
}

}  // namespace fusedrnn::schemas
