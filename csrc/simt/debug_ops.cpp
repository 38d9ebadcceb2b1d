// fusedrnn_simt_debug: what the tests need from the SIMT runtime, beside the
// persistent-path debug ops that ops.cpp registers in this namespace too.
//
//   set_device(sm_count, shared_per_sm, shared_per_block_optin)  emulate another GPU
//   reset_device()                       back to the H100 default
//   device() -> [sm_count, shared_per_sm, shared_per_block_optin]
//   set_watchdog_seconds(seconds)        how long a block waits at grid.sync()
//   launch_counts() -> (offsets, counts) launches per kernel since the last reset;
//                                        offsets are the kernels' addresses in
//   library_path() -> str                this library, named by its symbol table
//   reset_launch_counts()
#include <dlfcn.h>

#include <torch/library.h>

#include "simt.h"

namespace fusedrnn::simt {
namespace {

void set_device_op(int64_t sm_count, int64_t shared_per_sm, int64_t shared_per_block_optin) {
  Device d;
  d.sm_count = static_cast<int>(sm_count);
  d.shared_per_sm = shared_per_sm;
  d.shared_per_block_optin = shared_per_block_optin;
  d.shared_per_block = std::min<std::int64_t>(d.shared_per_block, shared_per_block_optin);
  set_device(d);
}

void reset_device_op() { set_device(Device{}); }

std::vector<int64_t> device_op() {
  const Device d = device();
  return {d.sm_count, d.shared_per_sm, d.shared_per_block_optin};
}

// Base address this library is loaded at.
const char* library_base(std::string* path) {
  Dl_info info{};
  TORCH_CHECK(dladdr(reinterpret_cast<const void*>(&device_op), &info) != 0,
              "SIMT: dladdr found no library");
  if (path != nullptr) *path = info.dli_fname;
  return static_cast<const char*>(info.dli_fbase);
}

std::tuple<std::vector<int64_t>, std::vector<int64_t>> launch_counts_op() {
  const char* base = library_base(nullptr);
  std::vector<int64_t> offsets, counts;
  for (const auto& [kernel, count] : launch_counts()) {
    offsets.push_back(static_cast<const char*>(kernel) - base);
    counts.push_back(count);
  }
  return {offsets, counts};
}

std::string library_path_op() {
  std::string path;
  library_base(&path);
  return path;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fusedrnn_simt_debug, m) {
  m.def("set_device(int sm_count, int shared_per_sm, int shared_per_block_optin) -> ()",
        &set_device_op);
  m.def("reset_device() -> ()", &reset_device_op);
  m.def("device() -> int[]", &device_op);
  m.def("set_watchdog_seconds(float seconds) -> ()", &set_watchdog_seconds);
  m.def("launch_counts() -> (int[], int[])", &launch_counts_op);
  m.def("library_path() -> str", &library_path_op);
  m.def("reset_launch_counts() -> ()", &reset_launch_counts);
}

}  // namespace fusedrnn::simt
