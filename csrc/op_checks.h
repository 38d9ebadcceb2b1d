// Argument checks of the four ops. The Python modules check first, with
// torch.nn's messages; these guard the ops themselves, which are public
// (torch.ops.fusedrnn.*) and whose backward ops read saved tensors by raw
// pointer: a wrong size here would be an out-of-bounds read, not an error.
#pragma once

#include <optional>

#include <ATen/core/Tensor.h>

namespace fusedrnn::checks {

using at::Tensor;

// fp16/bf16 are computed in fp32; fp32 and fp64 natively.
at::ScalarType compute_dtype_for(at::ScalarType dtype);

// One op's checks, all reported as "fusedrnn.<op>: <name> ...". `like` is
// the tensor every other argument must match in device (and dtype, where
// asked): the input for the forward ops, the saved gates for the backward.
class OpArgs {
 public:
  OpArgs(const char* op, const Tensor& like) : op_(op), like_(like) {}

  // fp32, fp64, fp16 or bf16: exactly the dtypes the kernels are built for.
  void supported_dtype(const Tensor& t, const char* name) const;
  void shape(const Tensor& t, const char* name, at::IntArrayRef expected) const;
  // Same device as `like`, and dtype `dtype`.
  void placed(const Tensor& t, const char* name, at::ScalarType dtype) const;
  // shape() and placed() in one.
  void tensor(const Tensor& t, const char* name, at::IntArrayRef expected,
              at::ScalarType dtype) const;
  // (B,) int64 on `like`'s device; returned contiguous.
  std::optional<Tensor> lengths(const std::optional<Tensor>& lengths, int64_t batch) const;
  // A 3-D (T, B, *) tensor.
  void sequence(const Tensor& t, const char* name) const;
  [[noreturn]] void fail(const std::string& message) const;

 private:
  const char* op_;
  const Tensor& like_;
};

}  // namespace fusedrnn::checks
