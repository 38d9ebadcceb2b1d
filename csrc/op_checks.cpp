#include "op_checks.h"

#include <c10/util/Exception.h>

#include <sstream>

namespace fusedrnn::checks {

at::ScalarType compute_dtype_for(at::ScalarType dtype) {
  return (dtype == at::kHalf || dtype == at::kBFloat16) ? at::kFloat : dtype;
}

void OpArgs::fail(const std::string& message) const {
  TORCH_CHECK(false, "fusedrnn.", op_, ": ", message);
}

void OpArgs::supported_dtype(const Tensor& t, const char* name) const {
  const auto dtype = t.scalar_type();
  if (dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
      dtype == at::kBFloat16)
    return;
  std::ostringstream msg;
  msg << name << " has dtype " << dtype
      << "; the kernels support float32, float64, float16 and bfloat16";
  fail(msg.str());
}

void OpArgs::shape(const Tensor& t, const char* name, at::IntArrayRef expected) const {
  if (t.sizes() == expected) return;
  std::ostringstream msg;
  msg << name << " must have shape " << expected << ", got " << t.sizes();
  fail(msg.str());
}

void OpArgs::placed(const Tensor& t, const char* name, at::ScalarType dtype) const {
  if (t.device() != like_.device()) {
    std::ostringstream msg;
    msg << name << " is on " << t.device() << " but the other arguments are on "
        << like_.device();
    fail(msg.str());
  }
  if (t.scalar_type() != dtype) {
    std::ostringstream msg;
    msg << name << " has dtype " << t.scalar_type() << ", expected " << dtype;
    fail(msg.str());
  }
}

void OpArgs::tensor(const Tensor& t, const char* name, at::IntArrayRef expected,
                    at::ScalarType dtype) const {
  shape(t, name, expected);
  placed(t, name, dtype);
}

void OpArgs::sequence(const Tensor& t, const char* name) const {
  if (t.dim() == 3) return;
  std::ostringstream msg;
  msg << name << " must be a 3-D (T, B, *) tensor, got shape " << t.sizes();
  fail(msg.str());
}

std::optional<Tensor> OpArgs::lengths(const std::optional<Tensor>& lengths,
                                      int64_t batch) const {
  if (!lengths) return std::nullopt;
  shape(*lengths, "lengths", {batch});
  placed(*lengths, "lengths", at::kLong);
  return lengths->contiguous();
}

}  // namespace fusedrnn::checks
