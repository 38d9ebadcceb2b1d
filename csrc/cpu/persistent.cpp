// Persistent CPU loops (see persistent.h for the design).
//
// The steps run as rounds of tiles on OpenMP's team (step_team.h): a tile
// is any thread's to take, so a thread the OS deschedules does not stall the
// steps. Each tile's small GEMM is oneDNN's
// micro-kernel (cpu/gemm.h), called without the dispatcher.
#include "cpu/persistent.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <type_traits>
#include <vector>

#include "cpu/gemm.h"
#include "cpu/row_kernels.h"
#include "cpu/step_team.h"

namespace fusedrnn::cpu {
namespace {

// Tiles are whole multiples of this many hidden units (a 256-bit fp32
// vector), placed evenly: fine enough to balance the threads (H = 200 on two
// threads splits 104/96, where whole 512-bit vectors would give 112/88,
// measured 10% slower).
constexpr int64_t kUnitAlign = 8;
// Tiles per thread: one, each thread's share as one GEMM of G * U columns.
// Two (a descheduled thread would find half of its share to take back) made
// the GRU's small rows 10-20% slower: 3 gates x 32 units leave a partial
// 64-column block of the micro-kernel.
constexpr int kTilesPerThread = 1;
// Below this many multiply-adds per step, a barrier per step costs more than
// a second thread saves; below this many per call, waking a second thread does
// (a short call, T = 1 in streaming use, stays on the calling thread).
constexpr int64_t kMinStepFmasPerThread = 16 * 1024;
constexpr int64_t kMinCallFmasPerThread = 256 * 1024;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The hidden units [begin, begin + units) of one tile.
struct UnitSlice {
  int64_t begin, units;
};

// A layer's hidden units as `count` tiles of whole vectors, none empty
// (step_team.h: the unit of work a thread claims per step).
struct TileGrid {
  int64_t hidden, vectors;
  int count;

  TileGrid(int64_t hidden, int threads)
      : hidden(hidden), vectors(ceil_div(hidden, kUnitAlign)),
        count(static_cast<int>(std::min<int64_t>(vectors, int64_t(threads) * kTilesPerThread))) {}

  UnitSlice slice(int tile) const {
    const int64_t begin = tile * vectors / count * kUnitAlign;
    const int64_t end = std::min(hidden, (tile + 1) * vectors / count * kUnitAlign);
    return {begin, end - begin};
  }
};

// How many threads a layer is worth: enough units and work for each.
int threads_for(int64_t steps, int64_t batch, int64_t hidden, int gates, int available) {
  const int64_t step_fmas = batch * gates * hidden * hidden;
  const int64_t by_units = ceil_div(hidden, kUnitAlign);
  const int64_t by_step = std::max<int64_t>(1, step_fmas / kMinStepFmasPerThread);
  const int64_t by_call = std::max<int64_t>(1, steps * step_fmas / kMinCallFmasPerThread);
  return static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>({available, by_units, by_step, by_call})));
}

// An uninitialised buffer (every element is written before it is read).
template <typename T>
std::unique_ptr<T[]> buffer(int64_t n) {
  return std::make_unique_for_overwrite<T[]>(static_cast<size_t>(n));
}

// Index of the s-th step processed.
int64_t step_time(int64_t s, int64_t steps, bool reverse) { return reverse ? steps - 1 - s : s; }

bool row_active_at(const int64_t* lengths, int64_t t, int64_t b) {
  return lengths == nullptr || t < lengths[b];
}

// Whether step t is the first a row processes (its previous state is the
// initial one): t == 0 forward; its own last step, lengths[b] - 1, reverse.
bool first_step_of_row(const int64_t* lengths, int64_t steps, bool reverse, int64_t t,
                       int64_t b) {
  if (!reverse) return t == 0;
  return t == (lengths ? lengths[b] : steps) - 1;
}

// ----------------------------------------------------- the two loops
// Shared by every cell. A cell supplies its gate count and a per-row
// callback working on one thread's units; the loops own the panels, the
// GEMMs and the barriers.

// A thread's share of the input projection: its (I, G*U) panel of W_ih^T and
// bias, and the projection of the current chunk of steps, (steps x B, G*U).
template <typename T>
class ChunkedProjection {
 public:
  ChunkedProjection(const InputProjection<T>& in, T* panel_storage, int64_t steps, int64_t B,
                    int64_t H, int G, int64_t j0, int64_t U, bool reverse)
      : in_(in), panel_(panel_storage, in.input_size, G * U), B_(B), steps_(steps),
        chunk_(std::max<int64_t>(1, kChunkRows / std::max<int64_t>(B, 1))), width_(G * U),
        reverse_(reverse), bias_(buffer<T>(G * U)), rows_(buffer<T>(chunk_ * B * G * U)) {
    for (int g = 0; g < G; ++g)
      for (int64_t u = 0; u < U; ++u) {
        const int64_t row = g * H + j0 + u;
        panel_.set_column(g * U + u, in.w_ih + row * in.input_size, 1);
        bias_[g * U + u] = in.bias ? in.bias[row] : T(0);
      }
  }

  // The projection (B, G*U) of the s-th step processed (time t), computing
  // the chunk that holds it when s starts one. Writable: a cell may add its
  // recurrent product in place.
  T* at_step(int64_t s, int64_t t) {
    if (s % chunk_ == 0) compute_chunk(s);
    return rows_.get() + (t - first_time_) * B_ * width_;
  }

 private:
  // Steps s .. s+n-1 cover times [first_time_, first_time_ + n), contiguous
  // rows of x in either direction.
  void compute_chunk(int64_t s) {
    const int64_t n = std::min(chunk_, steps_ - s);
    first_time_ = reverse_ ? steps_ - s - n : s;
    const int64_t rows = n * B_;
    for (int64_t r = 0; r < rows; ++r) std::copy_n(bias_.get(), width_, rows_.get() + r * width_);
    panel_.multiply(rows, in_.x + first_time_ * B_ * in_.input_size, in_.input_size, rows_.get(),
                    width_, /*accumulate=*/true);
  }

  static constexpr int64_t kChunkRows = 128;  // rows of x per chunk: the chunk stays in L2
  const InputProjection<T>& in_;
  BlockedPanel<T> panel_;
  int64_t B_, steps_, chunk_, width_;
  bool reverse_;
  std::unique_ptr<T[]> bias_, rows_;
  int64_t first_time_ = 0;
};

// Forward: round 0 packs each tile's panels; round 1 + s runs step s: the
// input projection x_t (ChunkedProjection) and the recurrent product
// h_{t-1} @ panel of the tile's units, then
// `row(t, b, j0, U, x_row, hh_row, h_prev_row, h_next_row)` for every batch
// row. With `sum_products` (LSTM, RNN: kSumsProducts) the recurrent product is
// added to the projection in place and x_row == hh_row holds the sum.
template <typename T, typename Row>
void forward_loop(int64_t steps, int64_t B, int64_t H, int G, bool reverse,
                  const InputProjection<T>& in, bool sum_products, const T* w_hh, const T* h0,
                  T* h_n, const Row& row) {
  if (steps == 0) {
    std::copy_n(h0, B * H, h_n);
    return;
  }
  // Per-tile panels of W_hh^T (H x G*U) and W_ih^T (I x G*U), side by side;
  // products (B x G*U); the double-buffered h all tiles read. One
  // allocation: one hole, not four, for what the caller allocates next.
  const auto scratch = buffer<T>((H + in.input_size + B) * G * H + 2 * B * H);
  T* const panels = scratch.get();
  T* const input_panels = panels + H * G * H;
  T* const products = input_panels + in.input_size * G * H;
  T* const h_work = products + B * G * H;
  const int threads = persistent_threads(steps, B, H, G);
  const TileGrid grid(H, threads);
  std::vector<std::optional<ChunkedProjection<T>>> projections(grid.count);
  run_rounds(threads, steps + 1, grid.count, [&](int64_t round, int tile) {
    const auto [j0, U] = grid.slice(tile);
    // panel[k, g*U + u] = W_hh[g*H + j0 + u, k]: the tile's rows of W_hh^T.
    BlockedPanel<T> panel(panels + H * G * j0, H, G * U);
    if (round == 0) {
      for (int g = 0; g < G; ++g)
        for (int64_t u = 0; u < U; ++u)
          panel.set_column(g * U + u, w_hh + (g * H + j0 + u) * H, 1);
      projections[tile].emplace(in, input_panels + in.input_size * G * j0, steps, B, H, G, j0,
                                U, reverse);
      return;
    }
    const int64_t s = round - 1, t = step_time(s, steps, reverse);
    const T* h_prev = s == 0 ? h0 : h_work + ((s - 1) & 1) * B * H;
    T* h_next = h_work + (s & 1) * B * H;
    T* x_part = projections[tile]->at_step(s, t);
    T* hh = sum_products ? x_part : products + B * G * j0;
    panel.multiply(B, h_prev, H, hh, G * U, /*accumulate=*/sum_products);
    for (int64_t b = 0; b < B; ++b)
      row(t, b, j0, U, x_part + b * G * U, hh + b * G * U, h_prev + b * H + j0,
          h_next + b * H + j0);
    if (s == steps - 1)
      for (int64_t b = 0; b < B; ++b) std::copy_n(h_next + b * H + j0, U, h_n + b * H + j0);
  });
}

// The recurrent gradient d_rec (T, B, G*H) as blocks of its columns, in
// order: `width` columns in a (T, B, ld) buffer each (the GRU's r and z parts
// are in d_xproj).
template <typename T>
struct ColumnBlock {
  const T* data;
  int64_t ld, width;
};

// Backward, steps in reverse: `row(t, b, j0, U)` for every batch row of a
// tile (it writes the recurrent gradient d_rec[t] of the tile's units and
// leaves in dh the part of h_{t-1}'s gradient that skips W_hh); once every
// tile's d_rec[t] is written, dh[:, j0:j0+U] += d_rec[t] @ W_hh[:, j0:j0+U],
// one product per block. Round r runs that product for the step of round
// r - 1, then the rows of the next step, which read only the tile's own dh:
// one round per step (round 0 packs the tile's panels instead).
template <typename T, typename Row>
void backward_loop(int64_t steps, int64_t B, int64_t H, int G, bool reverse, const T* w_hh,
                   const std::vector<ColumnBlock<T>>& d_rec, T* dh, const Row& row) {
  if (steps == 0) return;
  const auto panels = buffer<T>(G * H * H);
  const int threads = persistent_threads(steps, B, H, G);
  const TileGrid grid(H, threads);
  std::vector<std::vector<BlockedPanel<T>>> tile_panels(grid.count);
  run_rounds(threads, steps + 1, grid.count, [&](int64_t round, int tile) {
    const auto [j0, U] = grid.slice(tile);
    std::vector<BlockedPanel<T>>& block_panels = tile_panels[tile];
    if (round == 0) {
      // Block i's panel[k, u] = W_hh[k0 + k, j0 + u], k0 its first column in d_rec.
      int64_t k0 = 0;
      for (const ColumnBlock<T>& block : d_rec) {
        BlockedPanel<T>& panel =
            block_panels.emplace_back(panels.get() + G * H * j0 + k0 * U, block.width, U);
        for (int64_t k = 0; k < block.width; ++k) panel.set_row(k, w_hh + (k0 + k) * H + j0);
        k0 += block.width;
      }
    } else {
      const int64_t t = step_time(steps - round, steps, reverse);
      for (size_t i = 0; i < d_rec.size(); ++i)
        block_panels[i].multiply(B, d_rec[i].data + t * B * d_rec[i].ld, d_rec[i].ld, dh + j0,
                                 H, /*accumulate=*/true);
    }
    if (round < steps) {
      const int64_t t = step_time(steps - 1 - round, steps, reverse);
      for (int64_t b = 0; b < B; ++b) row(t, b, j0, U);
    }
  });
}

}  // namespace

int persistent_threads(int64_t steps, int64_t batch, int64_t hidden, int gates) {
  return threads_for(steps, batch, hidden, gates, max_team_threads());
}

template <typename T>
bool persistent_fits(int64_t batch, int64_t hidden) {
  return batch > 0 && hidden > 0 && (std::is_same_v<T, double> || have_brgemm());
}

// ------------------------------------------------------------------ the cells

// The cell before step t of row b: the initial one at its first step, else
// the one saved after the step processed just before.
template <typename T>
const T* previous_row(const T* init, const T* seq, const int64_t* lengths, int64_t steps,
                      bool reverse, int64_t t, int64_t b, int64_t B, int64_t H) {
  if (first_step_of_row(lengths, steps, reverse, t, b)) return init + b * H;
  const int64_t prev_t = reverse ? t + 1 : t - 1;
  return seq + (prev_t * B + b) * H;
}

template <class Cell, typename T>
void persistent_forward(const Sequence<T>& p, const InputProjection<T>& in) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  const int64_t B = p.batch, H = p.hidden;
  const auto& rows = best_cell_rows<Cell, T>();
  if constexpr (Cell::kCellState)
    if (p.c_n != p.c0) std::copy_n(p.c0, B * H, p.c_n);
  forward_loop<T>(p.steps, B, H, G, p.reverse, in, Cell::kSumsProducts, p.w_hh, p.h0, p.h_n,
                  [&](int64_t t, int64_t b, int64_t j0, int64_t U, const T* x, const T* hh,
                      const T* h_prev, T* h_next) {
    const int64_t row = (t * B + b) * H + j0;  // (t, b, j0) of a (T, B, H) buffer
    rows.forward_slice(
        {.hidden = H, .units = U, .x = x, .hh = Cell::kSumsProducts ? nullptr : hh,
         .b_hh = p.b_hh ? p.b_hh + j0 : nullptr, .h_prev = h_prev,
         .c = Cell::kCellState ? p.c_n + b * H + j0 : nullptr,
         .saved = p.saved ? p.saved + (t * B + b) * S * H + j0 : nullptr,
         .cells = p.cells ? p.cells + row : nullptr, .h_out = p.output + row, .h_next = h_next,
         .active = row_active_at(p.lengths, t, b)});
  });
}

template <class Cell, typename T>
void persistent_backward(const BackwardSequence<T>& p) {
  constexpr int G = Cell::kGates, S = Cell::kSaved, shared = Cell::kSharedGradGates;
  const int64_t B = p.batch, H = p.hidden, steps = p.steps;
  const auto& rows = best_cell_rows<Cell, T>();
  // The recurrent gradient: the gates it shares with d_xproj, then d_hh's.
  std::vector<ColumnBlock<T>> d_rec = {{p.d_xproj, G * H, shared * H}};
  if (shared < G) d_rec.push_back({p.d_hh, (G - shared) * H, (G - shared) * H});
  backward_loop<T>(steps, B, H, G, p.reverse, p.w_hh, d_rec, p.dh,
                   [&](int64_t t, int64_t b, int64_t j0, int64_t U) {
    const int64_t row = (t * B + b) * H + j0;
    const T* c_prev = Cell::kCellState
        ? previous_row(p.c0, p.cells, p.lengths, steps, p.reverse, t, b, B, H) + j0 : nullptr;
    const T* h_prev = Cell::kReadsHPrev
        ? previous_row(p.h0, p.output, p.lengths, steps, p.reverse, t, b, B, H) + j0 : nullptr;
    rows.backward_slice(
        {.hidden = H, .units = U, .saved = p.saved + (t * B + b) * S * H + j0,
         .cells = p.cells ? p.cells + row : nullptr, .c_prev = c_prev, .h_prev = h_prev,
         .grad_out = p.grad_out + row, .dh = p.dh + b * H + j0,
         .dc = p.dc ? p.dc + b * H + j0 : nullptr, .d_xproj = p.d_xproj + (t * B + b) * G * H + j0,
         .d_hh = p.d_hh ? p.d_hh + (t * B + b) * (G - shared) * H + j0 : nullptr,
         .active = row_active_at(p.lengths, t, b)});
  });
}

template bool persistent_fits<float>(int64_t, int64_t);
template bool persistent_fits<double>(int64_t, int64_t);
#define FUSEDRNN_INSTANTIATE(Cell)                                                         \
  template void persistent_forward<Cell, float>(const Sequence<float>&,                   \
                                                const InputProjection<float>&);           \
  template void persistent_forward<Cell, double>(const Sequence<double>&,                 \
                                                 const InputProjection<double>&);         \
  template void persistent_backward<Cell, float>(const BackwardSequence<float>&);         \
  template void persistent_backward<Cell, double>(const BackwardSequence<double>&);
FUSEDRNN_FOR_EACH_CELL(FUSEDRNN_INSTANTIATE)
#undef FUSEDRNN_INSTANTIATE

}  // namespace fusedrnn::cpu
