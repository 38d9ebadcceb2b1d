// Body of the CPU row kernels. Included by exactly one .cpp per instruction
// set, which defines CPU_CAPABILITY (DEFAULT, AVX2 or AVX512) first:
// everything here lands in namespace fusedrnn::cpu::CPU_CAPABILITY, as ATen
// does for its own kernels, so the builds never share a symbol.
//
// Each row is walked in SIMD chunks, the cell's element functions (cells/*.h)
// running on a chunk at a time; the last chunk is a partial load/store, so
// any hidden size works without a scalar tail.
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

// Calls f(j, n) for the chunks [j, j + n) covering [0, width).
template <typename T, typename F>
inline void for_each_chunk(int64_t width, F&& f) {
  constexpr int64_t lanes = Vec<T>::size();
  for (int64_t j = 0; j < width; j += lanes) {
    f(j, std::min<int64_t>(lanes, width - j));
  }
}

template <typename T>
const T* row_or_null(const T* base, int64_t b, int64_t width) {
  return base ? base + b * width : nullptr;
}
template <typename T>
T* row_or_null(T* base, int64_t b, int64_t width) {
  return base ? base + b * width : nullptr;
}

// The toolkit of one batch row, and of one chunk of it.
template <typename T>
struct RowToolkit {
  const T *zone_h, *zone_c, *rec_mask;
  T* h_masked;
  Clip<Vec<T>> cell_clip, grad_clip;

  RowToolkit(const StepToolkit<T>& tk, int64_t b, int64_t width)
      : zone_h(row_or_null(tk.zone_h, b, width)), zone_c(row_or_null(tk.zone_c, b, width)),
        rec_mask(row_or_null(tk.rec_mask, b, width)), h_masked(row_or_null(tk.h_masked, b, width)),
        cell_clip(Clip<Vec<T>>::make(tk.cell_clip)), grad_clip(Clip<Vec<T>>::make(tk.grad_clip)) {}

  ElementToolkit<Vec<T>> at(int64_t j, int64_t n) const {
    ElementToolkit<Vec<T>> e;
    e.zone_h_on = zone_h != nullptr;
    e.zone_c_on = zone_c != nullptr;
    if (zone_h) e.zone_h = load(zone_h + j, n);
    if (zone_c) e.zone_c = load(zone_c + j, n);
    e.cell_clip = cell_clip;
    e.grad_clip = grad_clip;
    return e;
  }
};

// ------------------------------------------------------------ step loops

template <class Cell, typename T>
void forward_row(const ForwardStep<T>& p, int64_t b) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  const int64_t H = p.hidden;
  T* saved = row_or_null(p.saved, b, S * H);  // nullptr: inference, save nothing
  T* c = row_or_null(p.c, b, H);
  T* cells = row_or_null(p.cells, b, H);
  T* h_out = p.h_out + b * H;
  T* h_state = row_or_null(p.h_state, b, H);
  if (!row_active(p.lengths, p.t, b)) {
    if (saved) std::fill_n(saved, S * H, T(0));
    if (cells) std::copy_n(c, H, cells);
    std::fill_n(h_out, H, T(0));
    return;  // h_state, c and h_masked keep their values
  }
  const T* x = p.xproj + b * G * H;
  const T* hh = p.hh + b * G * H;
  const RowToolkit<T> tk(p.toolkit, b, H);
  const bool reads_h = h_state && (Cell::kReadsHPrev || tk.zone_h);
  for_each_chunk<T>(H, [&](int64_t j, int64_t n) {
    typename Cell::template Inputs<Vec<T>> in;
    for (int g = 0; g < G; ++g) {
      in.x[g] = load(x + g * H + j, n);
      in.hh[g] = load(hh + g * H + j, n);
      if (p.b_hh) in.hh[g] += load(p.b_hh + g * H + j, n);
    }
    if (reads_h) in.h_prev = load(h_state + j, n);
    if constexpr (Cell::kCellState) in.c_prev = load(c + j, n);
    const auto out = Cell::forward(in, tk.at(j, n));
    if (saved)
      for (int k = 0; k < S; ++k) store(out.saved[k], saved + k * H + j, n);
    if constexpr (Cell::kCellState) {
      store(out.c, c + j, n);
      if (cells) store(out.c, cells + j, n);
    }
    store(out.h, h_out + j, n);
    if (h_state) store(out.h, h_state + j, n);
    if (tk.rec_mask) store(out.h * load(tk.rec_mask + j, n), tk.h_masked + j, n);
  });
}

template <class Cell, typename T>
void backward_row(const BackwardStep<T>& p, int64_t b) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  const int64_t H = p.hidden;
  const T* dh = p.dh + b * H;
  T* dc = row_or_null(p.dc, b, H);
  T* d_x = p.d_xproj + b * G * H;
  T* d_hh = row_or_null(p.d_hh, b, G * H);
  T* dh_state = row_or_null(p.dh_state, b, H);
  const RowToolkit<T> tk(p.toolkit, b, H);
  const bool active = row_active(p.lengths, p.t, b);
  if (!active) {
    std::fill_n(d_x, G * H, T(0));
    if (d_hh) std::fill_n(d_hh, G * H, T(0));
  }
  const T* saved = p.saved + b * S * H;
  for_each_chunk<T>(H, [&](int64_t j, int64_t n) {
    typename Cell::template GradInputs<Vec<T>> in;
    in.dh = load(dh + j, n);  // before dh_state is written: they may alias
    if constexpr (Cell::kCellState) in.dc = load(dc + j, n);
    const auto e = tk.at(j, n);
    if (!active) {  // the gradients pass straight through (dc clamped by grad_clip)
      const auto d = Cell::carry_grad(in, e);
      if (dh_state) store(d.dh_prev, dh_state + j, n);
      if constexpr (Cell::kCellState) store(d.dc_prev, dc + j, n);
      return;
    }
    for (int k = 0; k < S; ++k) in.saved[k] = load(saved + k * H + j, n);
    if constexpr (Cell::kCellState) {
      in.c = load(p.cells + b * H + j, n);
      in.c_prev = load(p.c_prev + b * H + j, n);
    }
    if constexpr (Cell::kReadsHPrev) in.h_prev = load(p.h_prev + b * H + j, n);
    const auto d = Cell::backward(in, e);
    for (int g = 0; g < G; ++g) {
      store(d.d_x[g], d_x + g * H + j, n);
      if (d_hh) store(d.d_hh[g], d_hh + g * H + j, n);
    }
    if (dh_state) store(d.dh_prev, dh_state + j, n);
    if constexpr (Cell::kCellState) store(d.dc_prev, dc + j, n);
  });
}

// ------------------------------------------------------ persistent slices

template <class Cell, typename T>
void forward_slice(const ForwardSlice<T>& p) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  const int64_t H = p.hidden, U = p.units;
  if (!p.active) {
    if (p.saved)
      for (int k = 0; k < S; ++k) std::fill_n(p.saved + k * H, U, T(0));
    if (p.cells) std::copy_n(p.c, U, p.cells);
    std::fill_n(p.h_out, U, T(0));
    std::copy_n(p.h_prev, U, p.h_next);
    return;
  }
  const ElementToolkit<Vec<T>> off;  // the persistent loops take no toolkit
  for_each_chunk<T>(U, [&](int64_t u, int64_t n) {
    typename Cell::template Inputs<Vec<T>> in;
    for (int g = 0; g < G; ++g) {
      in.x[g] = load(p.x + g * U + u, n);
      in.hh[g] = p.hh ? load(p.hh + g * U + u, n) : Vec<T>(T(0));
      if (p.b_hh) in.hh[g] += load(p.b_hh + g * H + u, n);
    }
    if constexpr (Cell::kReadsHPrev) in.h_prev = load(p.h_prev + u, n);
    if constexpr (Cell::kCellState) in.c_prev = load(p.c + u, n);
    const auto out = Cell::forward(in, off);
    if (p.saved)
      for (int k = 0; k < S; ++k) store(out.saved[k], p.saved + k * H + u, n);
    if constexpr (Cell::kCellState) {
      store(out.c, p.c + u, n);
      if (p.cells) store(out.c, p.cells + u, n);
    }
    store(out.h, p.h_out + u, n);
    store(out.h, p.h_next + u, n);
  });
}

template <class Cell, typename T>
void backward_slice(const BackwardSlice<T>& p) {
  constexpr int G = Cell::kGates, S = Cell::kSaved, shared = Cell::kSharedGradGates;
  const int64_t H = p.hidden, U = p.units;
  if (!p.active) {  // dh (and dc) pass straight through; zero gradients add nothing to dh
    for (int g = 0; g < G; ++g) std::fill_n(p.d_xproj + g * H, U, T(0));
    for (int g = shared; g < G; ++g) std::fill_n(p.d_hh + (g - shared) * H, U, T(0));
    return;
  }
  const ElementToolkit<Vec<T>> off;
  for_each_chunk<T>(U, [&](int64_t u, int64_t n) {
    typename Cell::template GradInputs<Vec<T>> in;
    for (int k = 0; k < S; ++k) in.saved[k] = load(p.saved + k * H + u, n);
    if constexpr (Cell::kCellState) {
      in.c = load(p.cells + u, n);
      in.c_prev = load(p.c_prev + u, n);
      in.dc = load(p.dc + u, n);
    }
    if constexpr (Cell::kReadsHPrev) in.h_prev = load(p.h_prev + u, n);
    in.dh = load(p.dh + u, n) + load(p.grad_out + u, n);
    const auto d = Cell::backward(in, off);
    for (int g = 0; g < G; ++g) store(d.d_x[g], p.d_xproj + g * H + u, n);
    for (int g = shared; g < G; ++g) store(d.d_hh[g], p.d_hh + (g - shared) * H + u, n);
    if constexpr (Cell::kCellState) store(d.dc_prev, p.dc + u, n);
    store(d.dh_prev, p.dh + u, n);  // the loop adds the recurrent gradient @ W_hh
  });
}

// ------------------------------------------------------- the state's rows

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
  if (row_active(p.lengths, p.t, b))
    std::fill_n(p.dh_state + b * W, W, T(0));  // all of it goes through W_hr and W_hh
  else
    std::copy_n(p.dh_total + b * W, W, p.dh_state + b * W);
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

// ------------------------------------------------------------ the sets

template <class Cell, typename T>
CellRows<Cell, T> cell_rows() {
  return {.forward = &forward_row<Cell, T>,
          .backward = &backward_row<Cell, T>,
          .forward_slice = &forward_slice<Cell, T>,
          .backward_slice = &backward_slice<Cell, T>};
}

template <typename T>
StateRows<T> state_rows() {
  return {.projected_commit = &projected_commit_row<T>,
          .grad_h_accumulate = &grad_h_accumulate_row<T>,
          .grad_h_carry = &grad_h_carry_row<T>,
          .grad_h_combine = &grad_h_combine_row<T>,
          .weight_product = &weight_product_group<T>};
}

#define FUSEDRNN_INSTANTIATE(Cell)                                  \
  template CellRows<Cell, float> cell_rows<Cell, float>();          \
  template CellRows<Cell, double> cell_rows<Cell, double>();
FUSEDRNN_FOR_EACH_CELL(FUSEDRNN_INSTANTIATE)
#undef FUSEDRNN_INSTANTIATE
template StateRows<float> state_rows<float>();
template StateRows<double> state_rows<double>();

}  // namespace fusedrnn::cpu::CPU_CAPABILITY
