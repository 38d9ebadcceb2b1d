// The threads of the persistent CPU loops: rounds of tiles that no thread owns.
//
// A persistent loop is a sequence of rounds (its steps); a round is a set of
// tiles (slices of hidden units), and every tile of a round runs before any
// tile of the next. With one barrier per step between threads that each own
// a slice, a thread the OS deschedules on a busy machine stalls every step
// until it runs again. Here a tile is only preferred by a thread (its home
// tiles, whose weights stay in that thread's cache): a thread done with its
// own takes over the tiles nobody has started after a short grace, so a
// descheduled thread costs its share of the work, not a time slice per step.
// A waiting thread spins for a bounded time (20 ms), then sleeps.
//
// The threads are OpenMP's, the team ATen uses (its threads spin for a while
// after each of ATen's parallel regions; a pool of our own would compete
// with them for the cores, measured 1.5-2.5x slower at small shapes on two
// cores). So a call still ends when every team thread has arrived, which a
// descheduled one delays once per call.
#pragma once

#include <c10/util/FunctionRef.h>

#include <cstdint>

namespace fusedrnn::cpu {

// Runs job(round, tile) for every round in [0, rounds) and tile in
// [0, tiles) on up to `threads` threads, the calling thread among them; all
// tiles of a round finish before any tile of the next starts. Exceptions
// are rethrown after the last round (the first one; later jobs are skipped).
void run_rounds(int threads, int64_t rounds, int tiles,
                c10::function_ref<void(int64_t round, int tile)> job);

// How many threads run_rounds can use at most: torch's intra-op thread count
// (1 inside a parallel region, whose team cannot grow).
int max_team_threads();

// How many tiles a thread other than their home thread has run, since the
// process started (fusedrnn_debug: tests under contention).
int64_t tiles_taken_over();

}  // namespace fusedrnn::cpu
