// A standalone driver of the SIMT target, with no ATen: the harness's own
// test (tests/test_simt_harness.py) builds it from a copy of csrc/cuda/, with
// or without a planted fault, plain or under a sanitizer, in seconds.
//
//   driver persistent-lstm|persistent-gru   persistent kernel vs a float64 reference
//   driver step-lstm                        the LSTM forward step kernel vs the same
//   driver <rule>                           a tiny kernel breaking one launch rule:
//       deadlock divergent partial-mask exit-at-grid watchdog too-large shared-limit
//   driver block-race                       two blocks of an ordinary launch write one
//                                           element (a race only TSan reports)
//
// Prints what it found and exits 0 (the numbers match), 1 (wrong numbers or
// NaN) or 2 (the runtime raised an error, printed as "SIMT ERROR: ...": what
// every rule mode must end in).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "persistent_barrier.cu"
#include "persistent_double.cu"
#include "persistent_float.cu"
#include "step_kernels_double.cu"
#include "step_kernels_float.cu"

namespace {

using fusedrnn::simt::dim3;
using fusedrnn::simt::Stream;

// Small sizes that still reach every path of the persistent plan (with the
// tiling override below): several units per block, a partial last block,
// several batch tiles with a partial last group, lengths, reverse.
constexpr int kSteps = 4, kBatch = 10, kHidden = 13;
const std::int64_t kLengths[kBatch] = {4, 2, 3, 1, 4, 4, 2, 3, 4, 1};

std::vector<float> random_values(std::size_t n, unsigned seed, float scale) {
  std::vector<float> v(n);
  unsigned state = seed * 2654435761u + 1;
  for (float& x : v) {
    state = state * 1664525u + 1013904223u;
    x = scale * (static_cast<float>(state >> 8) / 16777216.0f - 0.5f);
  }
  return v;
}

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// Reference forward (float64), torch.nn's gate order; returns output, h_n, c_n.
struct Result {
  std::vector<double> output, h_n, c_n;
};

Result reference(bool lstm, const std::vector<float>& xproj, const std::vector<float>& w_hh,
                 const std::vector<float>& b_hh, const std::vector<float>& h0,
                 const std::vector<float>& c0, bool reverse) {
  const int H = kHidden, G = lstm ? 4 : 3;
  Result r{std::vector<double>(kSteps * kBatch * H, 0.0), {h0.begin(), h0.end()},
           {c0.begin(), c0.end()}};
  for (int s = 0; s < kSteps; ++s) {
    const int t = reverse ? kSteps - 1 - s : s;
    std::vector<double> h_next = r.h_n, c_next = r.c_n;
    for (int b = 0; b < kBatch; ++b) {
      if (t >= kLengths[b]) continue;  // inactive: carried state, zero output
      for (int j = 0; j < H; ++j) {
        double x[4], hh[4];
        for (int g = 0; g < G; ++g) {
          x[g] = xproj[(t * kBatch + b) * G * H + g * H + j];
          hh[g] = lstm ? 0.0 : b_hh[g * H + j];
          for (int k = 0; k < H; ++k) hh[g] += w_hh[(g * H + j) * H + k] * r.h_n[b * H + k];
        }
        double h;
        if (lstm) {
          const double c = sigmoid(x[1] + hh[1]) * r.c_n[b * H + j] +
                           sigmoid(x[0] + hh[0]) * std::tanh(x[2] + hh[2]);
          h = sigmoid(x[3] + hh[3]) * std::tanh(c);
          c_next[b * H + j] = c;
        } else {
          const double rg = sigmoid(x[0] + hh[0]), z = sigmoid(x[1] + hh[1]);
          const double n = std::tanh(x[2] + rg * hh[2]);
          h = n + z * (r.h_n[b * H + j] - n);
        }
        h_next[b * H + j] = h;
        r.output[(t * kBatch + b) * H + j] = h;
      }
    }
    r.h_n = h_next;
    r.c_n = c_next;
  }
  return r;
}

int compare(const char* what, const std::vector<float>& got, const std::vector<double>& want) {
  double worst = 0.0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double err = std::fabs(got[i] - want[i]);
    if (!(err <= 1e-4)) {  // NaN fails too
      std::printf("MISMATCH %s[%zu]: %g, expected %g\n", what, i, got[i], want[i]);
      return 1;
    }
    worst = std::max(worst, err);
  }
  std::printf("OK %s max error %.2e\n", what, worst);
  return 0;
}

int persistent(bool lstm) {
  const int H = kHidden, G = lstm ? 4 : 3;
  const auto xproj = random_values(kSteps * kBatch * G * H, 1, 2.0f);
  const auto w_hh = random_values(G * H * H, 2, 0.6f), b_hh = random_values(G * H, 3, 0.4f);
  const auto h0 = random_values(kBatch * H, 4, 1.0f), c0 = random_values(kBatch * H, 5, 1.0f);
  std::vector<float> output(kSteps * kBatch * H), h_n(kBatch * H), c_n(c0);
  std::vector<float> gates(kSteps * kBatch * 4 * H), cells(kSteps * kBatch * H);
  namespace p = fusedrnn::cuda::persistent;
  p::set_tiling_override({.max_blocks = 2, .batch_tile = 4});
  using fusedrnn::cells::Gru;
  using fusedrnn::cells::Lstm;
  const bool ran =
      lstm ? p::forward<Lstm, float>({.steps = kSteps, .batch = kBatch, .hidden = H,
                                      .reverse = true, .xproj = xproj.data(), .w_hh = w_hh.data(),
                                      .b_hh = nullptr, .h0 = h0.data(), .c0 = c_n.data(),
                                      .output = output.data(), .h_n = h_n.data(),
                                      .c_n = c_n.data(), .saved = gates.data(),
                                      .cells = cells.data(), .lengths = kLengths})
           : p::forward<Gru, float>({.steps = kSteps, .batch = kBatch, .hidden = H,
                                     .reverse = true, .xproj = xproj.data(), .w_hh = w_hh.data(),
                                     .b_hh = b_hh.data(), .h0 = h0.data(), .c0 = nullptr,
                                     .output = output.data(), .h_n = h_n.data(), .c_n = nullptr,
                                     .saved = gates.data(), .cells = nullptr,
                                     .lengths = kLengths});
  if (!ran) {
    std::printf("MISMATCH: the persistent kernel refused the launch\n");
    return 1;
  }
  const Result want = reference(lstm, xproj, w_hh, b_hh, h0, c0, true);
  int rc = compare("output", output, want.output) | compare("h_n", h_n, want.h_n);
  if (lstm) rc |= compare("c_n", c_n, want.c_n);
  return rc;
}

int step_lstm() {
  const int H = kHidden;
  const auto xproj = random_values(kBatch * 4 * H, 1, 2.0f);
  const auto hh = random_values(kBatch * 4 * H, 2, 2.0f), c0 = random_values(kBatch * H, 3, 1.0f);
  std::vector<float> c(c0), h(kBatch * H), gates(kBatch * 4 * H), cells(kBatch * H);
  fusedrnn::cuda::cell_kernels<fusedrnn::cells::Lstm, float>().forward(
      {.batch = kBatch, .hidden = H, .xproj = xproj.data(), .hh = hh.data(), .h_state = nullptr,
       .c = c.data(), .saved = gates.data(), .cells = cells.data(), .h_out = h.data(),
       .lengths = nullptr, .t = 0});
  std::vector<double> want_h(kBatch * H), want_c(kBatch * H);
  for (int b = 0; b < kBatch; ++b)
    for (int j = 0; j < H; ++j) {
      double pre[4];
      for (int g = 0; g < 4; ++g) pre[g] = xproj[b * 4 * H + g * H + j] + hh[b * 4 * H + g * H + j];
      const double cn = sigmoid(pre[1]) * c0[b * H + j] + sigmoid(pre[0]) * std::tanh(pre[2]);
      want_c[b * H + j] = cn;
      want_h[b * H + j] = sigmoid(pre[3]) * std::tanh(cn);
    }
  return compare("h", h, want_h) | compare("c", c, want_c);
}

// ------------------------------------------------- launch-rule kernels

__global__ void deadlock_kernel(int* out) {
  if (threadIdx.x == 0) {
    __syncwarp();  // warp 0's other lanes wait at __syncthreads below
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void divergent_kernel(int* out) {
  if (threadIdx.x % 2 == 0)
    __syncthreads();
  else
    __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void partial_mask_kernel(float* out) {
  out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, 1.0f, 1);
}

__global__ void exit_at_grid_kernel(int* out) {
  if (blockIdx.x == 1) return;  // block 1 skips the barrier
  cooperative_groups::this_grid().sync();
  out[blockIdx.x] = 1;
}

__global__ void watchdog_kernel(int* out) {
  if (blockIdx.x == 1)
    for (;;) __syncthreads();  // never reaches grid.sync()
  cooperative_groups::this_grid().sync();
  out[blockIdx.x] = 1;
}

__global__ void block_race_kernel(int* out) {
  if (threadIdx.x == 0) out[0] += 1;
}

__global__ void shared_kernel(float* out) {
  FUSEDRNN_DYNAMIC_SHARED(float, s);
  s[threadIdx.x] = 1.0f;
  out[threadIdx.x] = s[threadIdx.x];
}

int rule(const std::string& name) {
  std::vector<int> ints(4096);
  std::vector<float> floats(4096);
  const std::map<std::string, std::function<void()>> rules = {
      {"deadlock", [&] { FUSEDRNN_LAUNCH(deadlock_kernel, 1, 64, 0, Stream{})(ints.data()); }},
      {"divergent", [&] { FUSEDRNN_LAUNCH(divergent_kernel, 1, 64, 0, Stream{})(ints.data()); }},
      {"partial-mask",
       [&] { FUSEDRNN_LAUNCH(partial_mask_kernel, 1, 32, 0, Stream{})(floats.data()); }},
      {"exit-at-grid",
       [&] {
         fusedrnn::simt::launch_cooperative(exit_at_grid_kernel, 4, 32, 0, Stream{}, ints.data());
       }},
      {"watchdog",
       [&] {
         fusedrnn::simt::set_watchdog_seconds(1.0);
         fusedrnn::simt::launch_cooperative(watchdog_kernel, 2, 32, 0, Stream{}, ints.data());
       }},
      {"too-large",
       [&] {  // 3 blocks of 1024 threads per SM do not fit: refused, nothing runs
         fusedrnn::simt::Device d;
         d.sm_count = 1;
         fusedrnn::simt::set_device(d);
         if (!fusedrnn::simt::launch_cooperative(exit_at_grid_kernel, 3, 1024, 0, Stream{},
                                                 ints.data()))
           throw fusedrnn::simt::Error("SIMT: cooperative launch too large (refused)");
       }},
      {"block-race",
       [&] {  // one block first: its threads' TSan identities are then reused
         FUSEDRNN_LAUNCH(block_race_kernel, 1, 64, 0, Stream{})(ints.data());
         FUSEDRNN_LAUNCH(block_race_kernel, 2, 64, 0, Stream{})(ints.data());
       }},
      {"shared-limit",
       [&] {  // 64 KB without cudaFuncSetAttribute
         FUSEDRNN_LAUNCH(shared_kernel, 1, 32, 64 * 1024, Stream{})(floats.data());
       }},
  };
  const auto found = rules.find(name);
  if (found == rules.end()) {
    std::printf("unknown mode %s\n", name.c_str());
    return 3;
  }
  found->second();
  std::printf("NOT ENFORCED: %s ran without an error\n", name.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  try {
    if (mode == "persistent-lstm") return persistent(true);
    if (mode == "persistent-gru") return persistent(false);
    if (mode == "step-lstm") return step_lstm();
    return rule(mode);
  } catch (const fusedrnn::simt::Error& e) {
    std::printf("SIMT ERROR: %s\n", e.what());
    return 2;
  }
}
