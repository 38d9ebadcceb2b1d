// Persistent CPU loops: the CPU analogue of cuda/persistent.cuh.
//
// One call runs every step of one layer (no projection, no toolkit) in one
// direction. The hidden units are split into tiles [j0, j0 + U), each with
// the matching W_hh rows of all G gates packed as an (H, G*U) panel; a thread
// keeps taking the same tiles, so a panel stays in its cache. Per step a tile
// multiplies h_{t-1} by its panel (one small GEMM, no dispatcher, no
// fork/join), applies the gate math to its units straight away and writes its
// part of h_t; the step ends when every tile has (step_team.h: tiles are not
// bound to threads, so a descheduled thread does not stall the step). The
// backward runs the same way over column panels of W_hh (G*H, U): each tile
// computes the gate gradients of its units, and once all have, adds its
// slice of (gate gradients) @ W_hh to dh_{t-1}. No reduction across threads
// is needed.
#pragma once

#include <cstdint>

#include "fusedrnn/params.h"

namespace fusedrnn::cpu {

// ----------------------------------------------- one row, one thread's units
// Row kernels for one batch row restricted to the `units` hidden units a
// thread owns. Pointers into full-width (B, W) buffers already point at the
// thread's first unit j0 of the row, so gate (or saved value) k of unit u
// sits at k * hidden + u; the thread's own products (`x`, `hh`) are packed
// as g * units + u.

template <typename T>
struct ForwardSlice {
  int64_t hidden, units;
  const T* x;       // (G, units) input projection, its biases in; with the
                    // recurrent product added where the cell sums them
  const T* hh;      // (G, units) recurrent product, or nullptr (added into x)
  const T* b_hh;    // recurrent bias at unit j0 (gate g at g * hidden), or nullptr
  const T* h_prev;  // h before the step (carried where inactive)
  T* c;             // running cell state (cells with one), in place
  T* saved;         // saved values, or nullptr (inference)
  T* cells;         // saved cell state after the step, or nullptr
  T* h_out;         // output of this step: h, or zero where inactive
  T* h_next;        // h after the step
  bool active;
};

// The backward slices leave in `dh` the part of h_{t-1}'s gradient that does
// not go through W_hh (cells/*.h: dh_prev; an inactive row: all of it); the
// loop then adds (recurrent gradient) @ W_hh with the other threads'.
template <typename T>
struct BackwardSlice {
  int64_t hidden, units;
  const T* saved;     // saved values of this step
  const T* cells;     // saved cell state after this step (cells with one)
  const T* c_prev;    // cell state before it
  const T* h_prev;    // h before it
  const T* grad_out;  // gradient of this step's output
  T* dh;              // in: gradient reaching h_t from later steps; out: see above
  T* dc;              // in: from the later step; out: to the earlier one
  T* d_xproj;         // gradient of the input projection (zero where inactive)
  T* d_hh;            // the recurrent product's where it differs from d_xproj's:
                      // gates kSharedGradGates.. (G - shared rows of `hidden`)
  bool active;
};

// ------------------------------------------------------------ whole sequences

// x @ W_ih^T + bias, which the forward loops compute themselves, a chunk of
// steps at a time and each thread for its own units: the (T, B, G*H)
// projection is never stored, and a chunk is still in cache when its steps
// read it.
template <typename T>
struct InputProjection {
  int64_t input_size;
  const T* x;     // (T, B, I)
  const T* w_ih;  // (G*H, I)
  const T* bias;  // (G*H): LSTM b_ih + b_hh, GRU b_ih; or nullptr
};

// Whether the persistent loops take a layer of this size and dtype (fp32
// needs oneDNN's brgemm in this torch build; fp64 runs a plain GEMM loop).
template <typename T>
bool persistent_fits(int64_t batch, int64_t hidden);

// How many threads a layer of `gates` gates uses, out of OpenMP's maximum.
int persistent_threads(int64_t steps, int64_t batch, int64_t hidden, int gates);

// Run a whole sequence; the caller checked persistent_fits. The forward
// loops take the input projection from `in` (p.xproj is not read). c_n may
// alias c0; h_n may not alias h0 (as for the CUDA kernels).
template <class Cell, typename T>
void persistent_forward(const Sequence<T>& p, const InputProjection<T>& in);
template <class Cell, typename T>
void persistent_backward(const BackwardSequence<T>& p);

}  // namespace fusedrnn::cpu
