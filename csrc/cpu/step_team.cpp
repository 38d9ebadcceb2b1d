// The threads of the persistent CPU loops (see step_team.h for the design).
#include "cpu/step_team.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "cpu/gemm.h"

namespace fusedrnn::cpu {
namespace {

using Clock = std::chrono::steady_clock;

// A waiting thread spins this long before it sleeps. On a quiet machine the
// thread it waits for is microseconds behind. On a busy one, a thread that
// sleeps waits for the scheduler when it is woken: with two busy processes
// on two cores, small rows (T=200 B=1, T=32 B=8) ran 2-6x slower than on
// libgomp's own barrier with 50 us here and up to 2x slower with 2 ms, and
// matched it with 20 ms. Sleeping after that bounds what a waiter takes
// from the machine's other work.
constexpr auto kSpinFor = std::chrono::microseconds(20000);
// A thread done with its home tiles takes over the tiles nobody has started
// after this long: on a quiet machine their own thread claims them first,
// and their weights stay in its cache.
constexpr auto kStealAfter = std::chrono::microseconds(4);

// Tiles run by a thread other than their home thread, since the process
// started (tests check that contention exercises the takeover).
std::atomic<int64_t> g_tiles_taken_over{0};

void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

// A 32-bit word that threads sleep on until it changes (a futex on Linux).
class Signal {
 public:
  uint32_t load() const { return word_.load(std::memory_order_acquire); }

  void publish(uint32_t value) {
    word_.store(value, std::memory_order_seq_cst);
    // seq_cst on both sides: either a sleeper's re-check sees the new value,
    // or this load sees the sleeper.
    if (sleepers_.load(std::memory_order_seq_cst) > 0) wake_all();
  }

  // Returns once the word differs from `seen`: spins for kSpinFor (calling
  // `while_spinning(waited)` every 64 spins), then sleeps.
  template <typename WhileSpinning>
  void wait_while(uint32_t seen, const WhileSpinning& while_spinning) {
    const auto start = Clock::now();
    for (int spins = 1;; ++spins) {
      if (load() != seen) return;
      if (spins % 64 == 0) {
        const auto waited = Clock::now() - start;
        if (waited > kSpinFor) break;
        while_spinning(waited);
      }
      cpu_relax();
    }
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    while (word_.load(std::memory_order_seq_cst) == seen) sleep(seen);
    sleepers_.fetch_sub(1, std::memory_order_relaxed);
  }

 private:
#ifdef __linux__
  void sleep(uint32_t seen) {
    syscall(SYS_futex, &word_, FUTEX_WAIT_PRIVATE, seen, nullptr, nullptr, 0);
  }
  void wake_all() { syscall(SYS_futex, &word_, FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0); }
#else
  void sleep(uint32_t) { std::this_thread::yield(); }
  void wake_all() {}
#endif
  static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t));
  std::atomic<uint32_t> word_{0};
  std::atomic<int> sleepers_{0};
};

// One call of run_rounds: which round each tile was last claimed for, how
// many tiles have finished, and the first error.
class RoundJob {
 public:
  RoundJob(int threads, int64_t rounds, int tiles,
           c10::function_ref<void(int64_t, int)> job)
      : threads(threads), job_(job), rounds_(rounds), tiles_(tiles),
        claimed_(std::make_unique<std::atomic<int64_t>[]>(tiles)) {
    for (int tile = 0; tile < tiles; ++tile) claimed_[tile].store(-1, std::memory_order_relaxed);
  }

  // Thread `index`'s part, until every round is done: its home tiles of
  // each round, then, while it waits for the round to finish, any tile
  // still unstarted after kStealAfter.
  void take_part(int index) {
    const int home_begin = index * tiles_ / threads, home_end = (index + 1) * tiles_ / threads;
    for (;;) {
      const uint32_t round = rounds_done_.load();
      if (round >= rounds_) return;
      for (int tile = home_begin; tile < home_end; ++tile) try_tile(round, tile);
      bool stole = false;
      rounds_done_.wait_while(round, [&](Clock::duration waited) {
        if (stole || waited < kStealAfter) return;
        stole = true;
        for (int k = 0; k < tiles_ - (home_end - home_begin); ++k)
          if (try_tile(round, (home_end + k) % tiles_))
            g_tiles_taken_over.fetch_add(1, std::memory_order_relaxed);
      });
    }
  }

  std::exception_ptr error() const { return error_; }

  const int threads;  // at most: OpenMP may give fewer

 private:
  // Claims `tile` for `round` and runs it, unless another thread has.
  bool try_tile(uint32_t round, int tile) {
    int64_t unclaimed = static_cast<int64_t>(round) - 1;
    std::atomic<int64_t>& claim = claimed_[tile];
    if (claim.load(std::memory_order_relaxed) != unclaimed ||
        !claim.compare_exchange_strong(unclaimed, round, std::memory_order_acq_rel))
      return false;
    if (!failed_.load(std::memory_order_relaxed)) {
      try {
        job_(round, tile);
      } catch (...) {
        std::lock_guard lock(error_mutex_);
        if (!error_) error_ = std::current_exception();
        failed_.store(true, std::memory_order_relaxed);
      }
    }
    // The last tile of the round (acquiring every other tile's writes
    // through the release sequence of finished_) starts the next one.
    const int64_t finished = finished_.fetch_add(1, std::memory_order_acq_rel) + 1;
    if (finished == (static_cast<int64_t>(round) + 1) * tiles_) rounds_done_.publish(round + 1);
    return true;
  }

  c10::function_ref<void(int64_t, int)> job_;
  const int64_t rounds_;
  const int tiles_;
  std::unique_ptr<std::atomic<int64_t>[]> claimed_;
  std::atomic<int64_t> finished_{0};  // tiles finished, over all rounds
  Signal rounds_done_;
  std::atomic<bool> failed_{false};
  std::mutex error_mutex_;
  std::exception_ptr error_;
};

}  // namespace

int64_t tiles_taken_over() { return g_tiles_taken_over.load(std::memory_order_relaxed); }

int max_team_threads() { return at::in_parallel_region() ? 1 : at::get_num_threads(); }

void run_rounds(int threads, int64_t rounds, int tiles,
                c10::function_ref<void(int64_t, int)> job) {
  TORCH_CHECK(rounds < (int64_t(1) << 31), "fusedrnn: the persistent loop takes fewer than 2^31 steps");
  if (rounds <= 0 || tiles <= 0) return;
  RoundJob work(std::clamp(threads, 1, tiles), rounds, tiles, job);
  if (work.threads == 1) {
    work.take_part(0);
    release_gemm_thread();  // oneDNN's per-thread state of the GEMMs
  } else {
#pragma omp parallel num_threads(work.threads)
    {
      // OpenMP may give fewer threads (inside another region): the missing
      // ones' tiles are taken over.
      work.take_part(omp_get_thread_num());
      release_gemm_thread();
    }
  }
  if (work.error()) std::rethrow_exception(work.error());
}

}  // namespace fusedrnn::cpu
