// Body of the CPU row kernels. Included by exactly one .cpp per instruction
// set, which defines CPU_CAPABILITY (DEFAULT or AVX2) first: everything here
// lands in namespace fusedrnn::cpu::CPU_CAPABILITY, as ATen does for its own
// kernels, so the two builds never share a symbol.
//
// Each row is walked in SIMD chunks; the last chunk is a partial load/store,
// so any hidden size works without a scalar tail.
#pragma once

#include <ATen/cpu/vec/functional.h>

#include <algorithm>

#include "cpu/row_kernels.h"
#include "cpu/vec_math.h"

namespace fusedrnn::cpu::CPU_CAPABILITY {

template <typename T>
using Vec = at::vec::Vectorized<T>;

template <typename T>
inline Vec<T> load(const T* ptr, int64_t n) {
  return Vec<T>::loadu(ptr, n);
}

template <typename T>
inline void store(const Vec<T>& v, T* ptr, int64_t n) {
  v.store(ptr, static_cast<int>(n));
}

// Stores four gate chunks, `stride` apart (the gate blocks of one row).
template <typename T>
inline void store_gates(T* gates, int64_t stride, int64_t n, const Vec<T>& a, const Vec<T>& b,
                       const Vec<T>& c, const Vec<T>& d) {
  store(a, gates, n);
  store(b, gates + stride, n);
  store(c, gates + 2 * stride, n);
  store(d, gates + 3 * stride, n);
}

// Calls f(j, n) for the chunks [j, j + n) covering [0, width).
template <typename T, typename F>
inline void for_each_chunk(int64_t width, F&& f) {
  constexpr int64_t lanes = Vec<T>::size();
  for (int64_t j = 0; j < width; j += lanes) {
    f(j, std::min<int64_t>(lanes, width - j));
  }
}

template <typename T>
void lstm_forward_row(const LstmForwardStep<T>& p, int64_t b) {
  const int64_t H = p.hidden;
  const T* x = p.xproj + b * 4 * H;
  const T* hh = p.hh + b * 4 * H;
  T* c = p.c + b * H;
  T* gates = p.gates ? p.gates + b * 4 * H : nullptr;  // nullptr: inference, save nothing
  T* cells = p.cells ? p.cells + b * H : nullptr;
  T* h_out = p.h_out + b * H;
  T* h_state = p.h_state ? p.h_state + b * H : nullptr;
  if (!row_active(p.lengths, p.t, b)) {
    if (gates) std::fill_n(gates, 4 * H, T(0));
    if (cells) std::copy_n(c, H, cells);
    std::fill_n(h_out, H, T(0));
    return;  // h_masked, like h_state, keeps its value
  }
  const auto clip = Clip<Vec<T>>::make(p.cell_clip);
  const T* zone_h = p.zone_h ? p.zone_h + b * H : nullptr;
  const T* zone_c = p.zone_c ? p.zone_c + b * H : nullptr;
  const T* rec_mask = p.rec_mask ? p.rec_mask + b * H : nullptr;
  T* h_masked = p.h_masked ? p.h_masked + b * H : nullptr;
  for_each_chunk<T>(H, [&](int64_t j, int64_t n) {
    auto pre = [&](int gate) { return load(x + gate * H + j, n) + load(hh + gate * H + j, n); };
    const auto c_prev = load(c + j, n);
    const auto s = lstm_cell_forward(pre(0), pre(1), pre(2), pre(3), c_prev, clip);
    if (gates) store_gates(gates + j, H, n, s.i, s.f, s.g, s.o);
    const auto c_new = zone_c ? zoneout_mix(load(zone_c + j, n), c_prev, s.c) : s.c;
    const auto h_new = zone_h ? zoneout_mix(load(zone_h + j, n), load(h_state + j, n), s.h) : s.h;
    store(c_new, c + j, n);
    if (cells) store(c_new, cells + j, n);
    store(h_new, h_out + j, n);
    if (h_state) store(h_new, h_state + j, n);
    if (rec_mask) store(h_new * load(rec_mask + j, n), h_masked + j, n);
  });
}

template <typename T>
void lstm_backward_row(const LstmBackwardStep<T>& p, int64_t b) {
  const int64_t H = p.hidden;
  const T* gates = p.gates + b * 4 * H;
  const T* cells = p.cells + b * H;
  const T* c_prev = p.c_prev + b * H;
  const T* dh = p.dh + b * H;
  T* dc = p.dc + b * H;
  T* d_gates = p.d_gates + b * 4 * H;
  const auto grad_clip = Clip<Vec<T>>::make(p.grad_clip);
  if (!row_active(p.lengths, p.t, b)) {
    std::fill_n(d_gates, 4 * H, T(0));  // dc passes through (clamped by grad_clip)
    if (grad_clip.on) {
      for_each_chunk<T>(H, [&](int64_t j, int64_t n) { store(grad_clip(load(dc + j, n)), dc + j, n); });
    }
    return;
  }
  const auto cell_clip = Clip<Vec<T>>::make(p.cell_clip);
  const T* zone_h = p.zone_h ? p.zone_h + b * H : nullptr;
  const T* zone_c = p.zone_c ? p.zone_c + b * H : nullptr;
  const Vec<T> one(T(1));
  for_each_chunk<T>(H, [&](int64_t j, int64_t n) {
    auto gate = [&](int g) { return load(gates + g * H + j, n); };
    const auto i = gate(0), f = gate(1), g = gate(2), o = gate(3), cp = load(c_prev + j, n);
    const auto dh_t = load(dh + j, n), dc_t = load(dc + j, n);
    // Zoneout: the cell's own outputs h~, c~ get (1 - d) of the gradient, and
    // c~ is recomputed (the saved cell is the mixed state).
    const auto d_h = zone_h ? load(zone_h + j, n) : Vec<T>(T(0));
    const auto d_c = zone_c ? load(zone_c + j, n) : Vec<T>(T(0));
    const auto c_new = zone_c ? lstm_new_cell(i, f, g, cp, cell_clip) : load(cells + j, n);
    const auto d = lstm_cell_backward(i, f, g, o, c_new, cp, zone_h ? (one - d_h) * dh_t : dh_t,
                                      zone_c ? (one - d_c) * dc_t : dc_t, cell_clip);
    store_gates(d_gates + j, H, n, d.d_i, d.d_f, d.d_g, d.d_o);
    const auto dc_prev = zone_c ? d.d_c_prev + d_c * dc_t : d.d_c_prev;
    store(grad_clip(dc_prev), dc + j, n);
  });
}

template <typename T>
void projected_commit_row(const ProjectedCommit<T>& p, int64_t b) {
  const int64_t W = p.h_size;
  T* out = p.out + b * W;
  if (!row_active(p.lengths, p.t, b)) {
    std::fill_n(out, W, T(0));
    return;
  }
  std::copy_n(p.h_new + b * W, W, out);
  std::copy_n(p.h_new + b * W, W, p.h_state + b * W);
  if (p.rec_mask) {
    const T *h = p.h_new + b * W, *mask = p.rec_mask + b * W;
    T* masked = p.h_masked + b * W;
    for_each_chunk<T>(W, [&](int64_t j, int64_t n) {
      store(load(h + j, n) * load(mask + j, n), masked + j, n);
    });
  }
}

template <typename T>
void grad_h_accumulate_row(const GradHStep<T>& p, int64_t b) {
  const int64_t W = p.h_size;
  const T* state = p.dh_state + b * W;
  T* total = p.dh_total + b * W;
  if (!row_active(p.lengths, p.t, b)) {
    std::copy_n(state, W, total);  // the output here is padding: no gradient enters
    return;
  }
  const T* g = p.grad_out + b * W;
  for_each_chunk<T>(W, [&](int64_t j, int64_t n) {
    store(load(state + j, n) + load(g + j, n), total + j, n);
  });
}

template <typename T>
void grad_h_carry_row(const GradHStep<T>& p, int64_t b) {
  const int64_t W = p.h_size;
  T* state = p.dh_state + b * W;
  const T* total = p.dh_total + b * W;
  if (!row_active(p.lengths, p.t, b)) {
    std::copy_n(total, W, state);
  } else if (p.zone) {  // zoneout: h_t = d h_{t-1} + ..., so h_{t-1} gets d * dh_t directly
    const T* zone = p.zone + b * W;
    for_each_chunk<T>(W, [&](int64_t j, int64_t n) {
      store(load(zone + j, n) * load(total + j, n), state + j, n);
    });
  } else {
    std::fill_n(state, W, T(0));
  }
}

template <typename T>
void grad_h_combine_row(const GradHCombine<T>& p, int64_t b) {
  const int64_t W = p.h_size;
  const T* rec = p.rec + b * W;
  const T* mask = p.rec_mask ? p.rec_mask + b * W : nullptr;
  T* state = p.dh_state + b * W;
  const auto clip = Clip<Vec<T>>::make(p.grad_clip);
  for_each_chunk<T>(W, [&](int64_t j, int64_t n) {
    const auto through_w = mask ? load(rec + j, n) * load(mask + j, n) : load(rec + j, n);
    store(clip(load(state + j, n) + through_w), state + j, n);
  });
}

template <typename T>
void gru_forward_row(const GruForwardStep<T>& p, int64_t b) {
  const int64_t H = p.hidden;
  const T* x = p.xproj + b * 3 * H;
  const T* hh = p.hh + b * 3 * H;
  T* h = p.h_state + b * H;
  T* gates = p.gates ? p.gates + b * 4 * H : nullptr;  // nullptr: inference
  T* h_out = p.h_out + b * H;
  if (!row_active(p.lengths, p.t, b)) {
    if (gates) std::fill_n(gates, 4 * H, T(0));
    std::fill_n(h_out, H, T(0));
    return;
  }
  const T* zone_h = p.zone_h ? p.zone_h + b * H : nullptr;
  const T* rec_mask = p.rec_mask ? p.rec_mask + b * H : nullptr;
  T* h_masked = p.h_masked ? p.h_masked + b * H : nullptr;
  for_each_chunk<T>(H, [&](int64_t j, int64_t n) {
    const auto hh_n = load(hh + 2 * H + j, n);
    const auto h_prev = load(h + j, n);
    const auto s = gru_cell_forward(load(x + j, n), load(x + H + j, n), load(x + 2 * H + j, n),
                                    load(hh + j, n), load(hh + H + j, n), hh_n, h_prev);
    if (gates) store_gates(gates + j, H, n, s.r, s.z, s.n, hh_n);
    const auto h_new = zone_h ? zoneout_mix(load(zone_h + j, n), h_prev, s.h) : s.h;
    store(h_new, h + j, n);
    store(h_new, h_out + j, n);
    if (rec_mask) store(h_new * load(rec_mask + j, n), h_masked + j, n);
  });
}

template <typename T>
void gru_backward_row(const GruBackwardStep<T>& p, int64_t b) {
  const int64_t H = p.hidden;
  const T* gates = p.gates + b * 4 * H;
  const T* h_prev = p.h_prev + b * H;
  const T* dh = p.dh + b * H;
  T* dx = p.d_xproj + b * 3 * H;
  T* dhh = p.d_hh + b * 3 * H;
  T* dh_state = p.dh_state + b * H;
  if (!row_active(p.lengths, p.t, b)) {
    std::fill_n(dx, 3 * H, T(0));
    std::fill_n(dhh, 3 * H, T(0));
    std::copy_n(dh, H, dh_state);
    return;
  }
  const T* zone_h = p.zone_h ? p.zone_h + b * H : nullptr;
  const Vec<T> one(T(1));
  for_each_chunk<T>(H, [&](int64_t j, int64_t n) {
    auto gate = [&](int g) { return load(gates + g * H + j, n); };
    const auto dh_t = load(dh + j, n);
    // Zoneout: the cell's h~ gets (1 - d) of the gradient, h_{t-1} d of it directly.
    const auto d_h = zone_h ? load(zone_h + j, n) : Vec<T>(T(0));
    const auto d = gru_cell_backward(gate(0), gate(1), gate(2), gate(3), load(h_prev + j, n),
                                     zone_h ? (one - d_h) * dh_t : dh_t);
    store(d.dx_r, dx + j, n);
    store(d.dx_z, dx + H + j, n);
    store(d.dx_n, dx + 2 * H + j, n);
    store(d.dx_r, dhh + j, n);
    store(d.dx_z, dhh + H + j, n);
    store(d.dh_n, dhh + 2 * H + j, n);
    store(zone_h ? d.dh_prev + d_h * dh_t : d.dh_prev, dh_state + j, n);
  });
}

template <typename T>
void lstm_forward_slice(const LstmForwardSlice<T>& p) {
  const int64_t H = p.hidden, U = p.units;
  if (!p.active) {
    if (p.gates) {
      for (int g = 0; g < 4; ++g) std::fill_n(p.gates + g * H, U, T(0));
    }
    if (p.cells) std::copy_n(p.c, U, p.cells);
    std::fill_n(p.h_out, U, T(0));
    std::copy_n(p.h_prev, U, p.h_next);
    return;
  }
  for_each_chunk<T>(U, [&](int64_t u, int64_t n) {
    auto pre = [&](int g) { return load(p.pre + g * U + u, n); };
    const auto s = lstm_cell_forward(pre(0), pre(1), pre(2), pre(3), load(p.c + u, n));
    if (p.gates) store_gates(p.gates + u, H, n, s.i, s.f, s.g, s.o);
    store(s.c, p.c + u, n);
    if (p.cells) store(s.c, p.cells + u, n);
    store(s.h, p.h_out + u, n);
    store(s.h, p.h_next + u, n);
  });
}

template <typename T>
void lstm_backward_slice(const LstmBackwardSlice<T>& p) {
  const int64_t H = p.hidden, U = p.units;
  if (!p.active) {
    // dh and dc pass straight through; zero gate gradients add nothing to dh.
    for (int g = 0; g < 4; ++g) std::fill_n(p.d_gates + g * H, U, T(0));
    return;
  }
  for_each_chunk<T>(U, [&](int64_t u, int64_t n) {
    auto gate = [&](int g) { return load(p.gates + g * H + u, n); };
    const auto dh = load(p.dh + u, n) + load(p.grad_out + u, n);
    const auto d = lstm_cell_backward(gate(0), gate(1), gate(2), gate(3), load(p.cells + u, n),
                                      load(p.c_prev + u, n), dh, load(p.dc + u, n));
    store_gates(p.d_gates + u, H, n, d.d_i, d.d_f, d.d_g, d.d_o);
    store(d.d_c_prev, p.dc + u, n);
    store(Vec<T>(T(0)), p.dh + u, n);  // all of h_{t-1}'s gradient goes through W_hh
  });
}

template <typename T>
void gru_forward_slice(const GruForwardSlice<T>& p) {
  const int64_t H = p.hidden, U = p.units;
  if (!p.active) {
    if (p.gates) {
      for (int g = 0; g < 4; ++g) std::fill_n(p.gates + g * H, U, T(0));
    }
    std::fill_n(p.h_out, U, T(0));
    std::copy_n(p.h_prev, U, p.h_next);
    return;
  }
  for_each_chunk<T>(U, [&](int64_t u, int64_t n) {
    auto hh = [&](int g) {
      const auto product = load(p.hh + g * U + u, n);
      return p.b_hh ? product + load(p.b_hh + g * H + u, n) : product;
    };
    const auto hh_n = hh(2);
    const auto s = gru_cell_forward(load(p.xproj + u, n), load(p.xproj + U + u, n),
                                    load(p.xproj + 2 * U + u, n), hh(0), hh(1), hh_n,
                                    load(p.h_prev + u, n));
    if (p.gates) store_gates(p.gates + u, H, n, s.r, s.z, s.n, hh_n);
    store(s.h, p.h_out + u, n);
    store(s.h, p.h_next + u, n);
  });
}

template <typename T>
void gru_backward_slice(const GruBackwardSlice<T>& p) {
  const int64_t H = p.hidden, U = p.units;
  if (!p.active) {
    for (int g = 0; g < 3; ++g) std::fill_n(p.d_xproj + g * H, U, T(0));
    std::fill_n(p.d_hh, U, T(0));
    return;  // dh passes straight through
  }
  for_each_chunk<T>(U, [&](int64_t u, int64_t n) {
    auto gate = [&](int g) { return load(p.gates + g * H + u, n); };
    const auto dh = load(p.dh + u, n) + load(p.grad_out + u, n);
    const auto d = gru_cell_backward(gate(0), gate(1), gate(2), gate(3), load(p.h_prev + u, n),
                                     dh);
    store(d.dx_r, p.d_xproj + u, n);
    store(d.dx_z, p.d_xproj + H + u, n);
    store(d.dx_n, p.d_xproj + 2 * H + u, n);
    store(d.dh_n, p.d_hh + u, n);
    store(d.dh_prev, p.dh + u, n);  // z * dh; the loop adds the recurrent gradient @ W_hh
  });
}

// Rows [4 g, 4 g + 4) of w against every row of a (WeightProduct): each chunk
// of a loaded feeds `rows_of_w` dot products (a constant, so the sums stay
// in registers), and the rows of w stay in L1 from one row of a to the next.
// Lanes of a partial last chunk load as zeros; the others load whole vectors
// (masked loads are several times slower on some CPUs: AMD).
template <typename T, int rows_of_w>
void weight_product_rows(const WeightProduct<T>& p, int64_t n0) {
  const int64_t K = p.K;
  const T* w = p.w + n0 * K;
  for (int64_t m = 0; m < p.rows; ++m) {
    const T* a = p.a + m * p.lda;
    Vec<T> acc[rows_of_w];
    for (int r = 0; r < rows_of_w; ++r) acc[r] = Vec<T>(T(0));
    constexpr int64_t lanes = Vec<T>::size();
    int64_t k = 0;
    for (; k + lanes <= K; k += lanes) {  // whole vectors: no masked loads
      const auto x = Vec<T>::loadu(a + k);
      for (int r = 0; r < rows_of_w; ++r)
        acc[r] = at::vec::fmadd(x, Vec<T>::loadu(w + r * K + k), acc[r]);
    }
    if (k < K) {
      const auto x = load(a + k, K - k);
      for (int r = 0; r < rows_of_w; ++r)
        acc[r] = at::vec::fmadd(x, load(w + r * K + k, K - k), acc[r]);
    }
    T* out = p.out + m * p.ldo + n0;
    for (int r = 0; r < rows_of_w; ++r) {
      const T sum = at::vec::vec_reduce_all<T>([](Vec<T>& x, Vec<T>& y) { return x + y; }, acc[r]);
      out[r] = (p.bias ? p.bias[n0 + r] : T(0)) + sum;
    }
  }
}

template <typename T>
void weight_product_group(const WeightProduct<T>& p, int64_t g) {
  const int64_t n0 = 4 * g;
  switch (std::min<int64_t>(4, p.N - n0)) {
    case 4: return weight_product_rows<T, 4>(p, n0);
    case 3: return weight_product_rows<T, 3>(p, n0);
    case 2: return weight_product_rows<T, 2>(p, n0);
    default: return weight_product_rows<T, 1>(p, n0);
  }
}

template <typename T>
RowKernels<T> row_kernels() {
  return {.lstm_forward = &lstm_forward_row<T>,
          .lstm_backward = &lstm_backward_row<T>,
          .projected_commit = &projected_commit_row<T>,
          .grad_h_accumulate = &grad_h_accumulate_row<T>,
          .grad_h_carry = &grad_h_carry_row<T>,
          .gru_forward = &gru_forward_row<T>,
          .gru_backward = &gru_backward_row<T>,
          .grad_h_combine = &grad_h_combine_row<T>,
          .weight_product = &weight_product_group<T>,
          .lstm_forward_slice = &lstm_forward_slice<T>,
          .lstm_backward_slice = &lstm_backward_slice<T>,
          .gru_forward_slice = &gru_forward_slice<T>,
          .gru_backward_slice = &gru_backward_slice<T>};
}

template RowKernels<float> row_kernels<float>();
template RowKernels<double> row_kernels<double>();

}  // namespace fusedrnn::cpu::CPU_CAPABILITY
