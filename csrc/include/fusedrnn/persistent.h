// Persistent kernels: one cooperative launch runs every time step of one
// layer in one direction, forward or backward, with the recurrent weights
// held in shared memory for the whole sequence (see cuda/persistent.cuh and
// cuda/persistent_backward.cuh for the design).
//
// Plain declarations, no CUDA headers, so the layer driver (csrc/layer/)
// can include this file. Implemented in cuda/persistent_{float,double}.cu for
// every cell (fp16/bf16 tensors are computed in fp32 by the caller).
#pragma once

#include <cstdint>

#include "fusedrnn/params.h"

namespace fusedrnn::cuda::persistent {

// Runs the whole sequence in one cooperative launch on the current stream of
// the current device. Returns false, having launched nothing, when it cannot:
//   - steps, batch or hidden is 0 (the standard path handles empty sizes);
//   - the device has no cooperative launch;
//   - the W_hh slices do not fit in shared memory (hidden > max_hidden);
//   - the grid cannot be co-resident (occupancy query x SM count).
// Never hangs: the grid is at most one block per SM and is checked before
// launching. No host synchronisation.
//
// Requirements on the struct (unchecked): all tensors on the current device,
// dense in the layout documented in params.h; `lengths` is a device pointer
// to `batch` int64 values or nullptr; `saved` (and `cells`) may be
// nullptr to skip saving them (inference); `h_n` must not alias `h0` (other
// blocks may still be reading h0 when h_n is written if steps == 1);
// `c_n` may alias `c0`.
template <class Cell, typename T>
bool forward(const Sequence<T>& p);

// The backward of such a layer in one cooperative launch (persistent_backward.cuh):
// fills the gradients of every step and leaves the gradients reaching h0 (and
// c0) in dh (dc). Returns false, having launched nothing, as above (the
// staged rows are G*H wide, so it fits fewer rows per tile).
template <class Cell, typename T>
bool backward(const BackwardSequence<T>& p);

// Debug override of the tiling plan (fusedrnn_debug.set_persistent_tiling),
// so that tests reach every path of the kernel at small sizes: several units
// per block, a partial last block, several batch tiles. 0 keeps the plan's
// own choice.
struct TilingOverride {
  int64_t max_blocks = 0;  // cut H over at most this many blocks
  int64_t batch_tile = 0;  // rows of h per tile: a multiple of 4, capped by shared memory
};
void set_tiling_override(const TilingOverride& knobs);  // throws on invalid values
TilingOverride tiling_override();

// The tiling a launch of this size would use on the current device, under the
// tiling override (debug op persistent_plan); all zero when it does not fit.
struct Plan {
  int64_t units = 0;         // hidden units per block (the last block may own fewer)
  int64_t batch_tile = 0;    // rows of h staged at once
  int64_t blocks = 0;        // grid size
  int64_t shared_bytes = 0;  // dynamic shared memory per block
};
template <typename T>
Plan plan_for(int64_t hidden, int64_t batch, int num_gates);

// Largest hidden size the persistent path accepts on the current device for
// this dtype and a cell of num_gates gates (4 LSTM, 3 GRU, 1 RNN).
// From shared memory, SM count and the tiling override only; the launch
// also checks occupancy.
// On an H100 (132 SMs, 227 KB): LSTM 1320 (float) / 908 (double),
// GRU 1452 (float) / 1037 (double).
template <typename T>
int64_t max_hidden(int num_gates);

// Micro-benchmark: runs `steps` grid barriers with no work on `blocks` blocks
// (of the persistent kernels' block size) and returns the elapsed
// microseconds of the whole launch, measured with CUDA events on the current
// stream (this one does synchronise: it waits for the stop event).
// Throws when `blocks` cannot be co-resident.
double barrier_microbench(int64_t steps, int64_t blocks);

}  // namespace fusedrnn::cuda::persistent
