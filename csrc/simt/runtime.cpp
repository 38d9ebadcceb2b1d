// The SIMT scheduler: CUDA threads as fibers, blocks as OS threads (simt.h).
//
// A block's fibers run on one OS thread, one at a time, until they reach a
// collective (__syncthreads, __syncwarp, a shuffle, grid.sync) or exit; the
// scheduler resumes them when the collective completes. So:
//   * __syncthreads completes when every thread of the block arrived at the
//     same call site; arriving after a thread exited, or all live threads
//     waiting on something that cannot complete, is an error (deadlock);
//   * warp collectives gather all 32 lanes; shuffles exchange values through
//     a per-warp slot array (double-buffered by generation, so a fast lane
//     cannot overwrite slots a slow lane has not read);
//   * grid.sync: once all live fibers of a block wait there, the block's OS
//     thread waits on a mutex/condition variable across the grid, with a
//     watchdog, and fails if another block exited instead of arriving.
//
// Sanitizers. ThreadSanitizer gets one fiber per CUDA thread (switched with
// no_sync) and exactly CUDA's happens-before edges: __syncthreads,
// __syncwarp and grid.sync release on arrival and acquire on leaving, on a
// sync object per barrier generation parity (a fiber leaving barrier k must
// not acquire releases made at k+1); launch start and end release/acquire
// between the launching thread and every fiber. Shuffles exchange values but
// order no memory, as on a GPU. In the TSan build this file is compiled
// without instrumentation (FUSEDRNN_SIMT_TSAN): the scheduler's own state,
// shared by all fibers of a block, must add no edge and report no race.
// AddressSanitizer is told about every stack switch.
#include "simt.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>

#if !defined(__x86_64__) || defined(FUSEDRNN_SIMT_UCONTEXT)
#include <ucontext.h>
#define FUSEDRNN_SIMT_USE_UCONTEXT 1
#endif

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if defined(FUSEDRNN_SIMT_TSAN)
extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
}
#endif

namespace fusedrnn::simt {
namespace {

// ------------------------------------------------------------ sanitizers

#if defined(FUSEDRNN_SIMT_TSAN)
void* tsan_current() { return __tsan_get_current_fiber(); }
void* tsan_create() { return __tsan_create_fiber(0); }
void tsan_destroy(void* fiber) { __tsan_destroy_fiber(fiber); }
void tsan_switch(void* fiber) { __tsan_switch_to_fiber(fiber, 1 /* no_sync */); }
void tsan_release(void* anchor) { __tsan_release(anchor); }
void tsan_acquire(void* anchor) { __tsan_acquire(anchor); }
#else
void* tsan_current() { return nullptr; }
void* tsan_create() { return nullptr; }
void tsan_destroy(void*) {}
void tsan_switch(void*) {}
void tsan_release(void*) {}
void tsan_acquire(void*) {}
#endif

#if defined(__SANITIZE_ADDRESS__)
void asan_start_switch(void** fake_stack, const void* bottom, std::size_t size) {
  __sanitizer_start_switch_fiber(fake_stack, bottom, size);
}
void asan_finish_switch(void* fake_stack, const void** bottom, std::size_t* size) {
  __sanitizer_finish_switch_fiber(fake_stack, bottom, size);
}
void asan_unpoison(void* p, std::size_t size) { __asan_unpoison_memory_region(p, size); }
#else
void asan_start_switch(void**, const void*, std::size_t) {}
void asan_finish_switch(void*, const void**, std::size_t*) {}
void asan_unpoison(void*, std::size_t) {}
#endif

// ------------------------------------------------------ context switch

#if defined(FUSEDRNN_SIMT_USE_UCONTEXT)
struct Context {
  ucontext_t uc;
};

void prepare(Context& c, void* stack, std::size_t size, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}

void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#else
// x86-64 System V: save the callee-saved registers, MXCSR and the x87 control
// word on the current stack, store the stack pointer, load the other one and
// restore the same from it. No signal mask and no system call, unlike
// swapcontext, which costs ~0.3 us here.
extern "C" void fusedrnn_simt_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .p2align 4
  .globl fusedrnn_simt_switch
  .hidden fusedrnn_simt_switch
  .type fusedrnn_simt_switch, @function
fusedrnn_simt_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fusedrnn_simt_switch, .-fusedrnn_simt_switch
)");

struct Context {
  void* sp = nullptr;
};

// A frame that fusedrnn_simt_switch "returns" into `entry` from, with the
// stack aligned as after a call and a null return address above it.
void prepare(Context& c, void* stack, std::size_t size, void (*entry)()) {
  auto top = (reinterpret_cast<std::uintptr_t>(stack) + size) & ~std::uintptr_t{15};
  auto* slot = reinterpret_cast<std::uint64_t*>(top);
  slot[-1] = 0;
  slot[-2] = reinterpret_cast<std::uint64_t>(entry);
  for (int i = 3; i <= 8; ++i) slot[-i] = 0;  // rbp, rbx, r12-r15
  std::uint32_t mxcsr;
  std::uint16_t fpu_control;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpu_control));
  std::memcpy(&slot[-9], &mxcsr, 4);  // inherit the creator's rounding/FTZ
  std::memcpy(reinterpret_cast<char*>(&slot[-9]) + 4, &fpu_control, 2);
  c.sp = &slot[-9];
}

void switch_context(Context& from, Context& to) { fusedrnn_simt_switch(&from.sp, to.sp); }
#endif

// ----------------------------------------------------------- resources

// Generous: sanitizer reports are printed on the fiber's stack. Only touched
// pages cost memory; a guard page below turns an overflow into a fault.
constexpr std::size_t kStackBytes = 256 * 1024;

class Stack {
 public:
  Stack() = default;
  static Stack map() {
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    void* p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (p == MAP_FAILED) throw Error("SIMT: cannot map a fiber stack");
    mprotect(p, page, PROT_NONE);
    Stack s;
    s.base_ = static_cast<char*>(p);
    s.page_ = page;
    return s;
  }
  Stack(Stack&& o) noexcept : base_(std::exchange(o.base_, nullptr)), page_(o.page_) {}
  Stack& operator=(Stack&& o) noexcept {
    std::swap(base_, o.base_);
    std::swap(page_, o.page_);
    return *this;
  }
  ~Stack() {
    if (base_ != nullptr) munmap(base_, kStackBytes + page_);
  }
  void* bottom() const { return base_ + page_; }
  std::size_t size() const { return kStackBytes; }

 private:
  char* base_ = nullptr;
  std::size_t page_ = 0;
};

// What a running CUDA thread needs: a stack and, under TSan, a thread
// identity of its own. Creating a TSan fiber costs about 1 ms and 0.8 MB
// (gcc 12's runtime), so both are pooled across launches. Within one launch
// TSan builds never share them between CUDA threads: a reused identity would
// order the two threads, and a reused stack would look like a race between
// them. Other builds reuse a stack as soon as its thread exits.
struct Resources {
  Stack stack;
  void* tsan = nullptr;
};

#if defined(FUSEDRNN_SIMT_TSAN)
constexpr bool kDistinctPerLaunch = true;
// TSan (v2) handles at most 8192 threads; each fiber also keeps ~0.8 MB.
constexpr std::size_t kMaxTsanFibers = 4096;
#else
constexpr bool kDistinctPerLaunch = false;
#endif

class ResourcePool {
 public:
  Resources take() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!free_.empty()) {
        Resources r = std::move(free_.back());
        free_.pop_back();
        return r;
      }
#if defined(FUSEDRNN_SIMT_TSAN)
      if (++tsan_fibers_ > kMaxTsanFibers)
        throw Error("SIMT under ThreadSanitizer: a launch needs more than " +
                    std::to_string(kMaxTsanFibers) +
                    " CUDA threads at once; use smaller sizes or emulate fewer SMs");
#endif
    }
    Resources r;
    r.stack = Stack::map();
    r.tsan = tsan_create();  // by a scheduler: ordered after no CUDA thread
    return r;
  }

  // A thread that ran to its end: its stack holds no live frame.
  void give(Resources r) {
    asan_unpoison(r.stack.bottom(), r.stack.size());
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(std::move(r));
  }

  // A thread abandoned mid-kernel (after an error): its frames and TSan's
  // record of them are dropped with it.
  void discard(Resources r) {
    asan_unpoison(r.stack.bottom(), r.stack.size());
    tsan_destroy(r.tsan);
#if defined(FUSEDRNN_SIMT_TSAN)
    std::lock_guard<std::mutex> lock(mu_);
    --tsan_fibers_;
#endif
  }

 private:
  std::mutex mu_;
  std::vector<Resources> free_;
  std::size_t tsan_fibers_ = 0;
};

// Process-wide state is built when the library loads, before any thread that
// uses it exists: a function-local static's lazy initialisation would go
// unseen by TSan in this uninstrumented file (its fast path is a plain load).
ResourcePool the_resource_pool;

ResourcePool& resource_pool() { return the_resource_pool; }

// ------------------------------------------------------ global state

struct Globals {
  std::mutex mu;
  Device device;
  double watchdog_seconds = 120.0;
  std::map<KernelId, std::int64_t> max_dynamic_shared;  // cudaFuncSetAttribute
  std::map<KernelId, std::int64_t> launches;
};

Globals the_globals;

Globals& globals() { return the_globals; }

std::string where_str(const Location& where) {
  std::string file = where.file_name();
  const auto slash = file.find_last_of('/');
  if (slash != std::string::npos) file = file.substr(slash + 1);
  return file + ":" + std::to_string(where.line());
}

std::string dim_str(const dim3& d) {
  return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")";
}

dim3 unflatten(unsigned i, const dim3& extent) {
  return dim3(i % extent.x, (i / extent.x) % extent.y, i / (extent.x * extent.y));
}

std::size_t volume(const dim3& d) { return std::size_t{d.x} * d.y * d.z; }

std::string seconds_str(double seconds) {
  std::ostringstream s;
  s << seconds << " s";
  return s.str();
}

constexpr unsigned kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;

// Fail fast when another block failed: thrown inside fibers, it unwinds the
// kernel and ends the fiber; never the launch's reported error.
const char* const kAborted = "SIMT: aborted because another block failed";

// ------------------------------------------------------------ the grid

class Grid {
 public:
  Grid(const LaunchConfig& config, const std::function<void()>& body)
      : config(config), body(body), blocks(static_cast<unsigned>(volume(config.grid))) {}

  const LaunchConfig& config;
  const std::function<void()>& body;
  const unsigned blocks;

  // TSan sync objects: launch start, launch end, grid barrier by generation
  // parity. Heap memory, so that freeing it also ends the sync objects.
  void* start_anchor() { return &anchors_[0]; }
  void* end_anchor() { return &anchors_[1]; }
  void* barrier_anchor(unsigned generation) { return &anchors_[2 + (generation & 1)]; }

  bool aborted() const { return aborted_.load(std::memory_order_relaxed); }
  unsigned generation() const { return generation_.load(std::memory_order_relaxed); }

  // Dynamic shared memory of one block: exact size, NaN bytes. Kept until the
  // launch ends: freeing it earlier would be a write TSan cannot order after
  // the block's threads (nothing orders them before the next block).
  void* new_shared() {
    void* p = nullptr;
    if (posix_memalign(&p, 16, config.dynamic_shared) != 0) throw Error("SIMT: out of memory");
    std::memset(p, 0xFF, config.dynamic_shared);
    std::lock_guard<std::mutex> lock(mu_);
    shared_.emplace_back(p, &std::free);
    return p;
  }

  // Called by a block's OS thread once all its live threads wait at grid.sync.
  void barrier(const dim3& block) {
    std::unique_lock<std::mutex> lock(mu_);
    const unsigned gen = generation();
    if (++arrived_ == blocks) {
      arrived_ = 0;
      generation_.store(gen + 1, std::memory_order_relaxed);
      cv_.notify_all();
      return;
    }
    const double limit = watchdog_seconds();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(limit);
    while (generation() == gen) {
      if (aborted()) throw Error(kAborted);
      if (finished_ > 0)
        throw Error("SIMT: block " + dim_str(block) + " waits at grid.sync() but " +
                    std::to_string(finished_) + " block(s) exited without reaching it");
      if (cv_.wait_until(lock, deadline) == std::cv_status::timeout && generation() == gen)
        throw Error("SIMT watchdog: block " + dim_str(block) + " waited " + seconds_str(limit) +
                    " at grid.sync(); " + std::to_string(arrived_) + " of " +
                    std::to_string(blocks) + " blocks arrived (inter-block deadlock)");
    }
  }

  void block_finished(const dim3& block) {
    std::lock_guard<std::mutex> lock(mu_);
    ++finished_;
    cv_.notify_all();
    if (arrived_ > 0)
      throw Error("SIMT: block " + dim_str(block) + " exited without reaching the grid.sync() " +
                  std::to_string(arrived_) + " block(s) wait at");
  }

  void fail(const std::string& message) {
    std::lock_guard<std::mutex> lock(mu_);
    if (error_.empty() || error_ == kAborted) error_ = message;
    aborted_.store(true, std::memory_order_relaxed);
    cv_.notify_all();
  }

  const std::string& error() const { return error_; }

  // Resources of finished threads, returned to the pool when the launch ends.
  void hold(Resources r) {
    std::lock_guard<std::mutex> lock(mu_);
    held_.push_back(std::move(r));
  }
  ~Grid() {
    for (Resources& r : held_) resource_pool().give(std::move(r));
  }

 private:
  std::unique_ptr<char[]> anchors_{new char[4]};
  std::atomic<bool> aborted_{false};
  std::atomic<unsigned> generation_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  unsigned arrived_ = 0, finished_ = 0;
  std::string error_;
  std::vector<std::unique_ptr<void, void (*)(void*)>> shared_;
  std::vector<Resources> held_;
};

// ------------------------------------------------------------ the block

enum class Wait : std::uint8_t { running, block_barrier, warp, grid, exited };

struct Fiber {
  unsigned rank = 0;  // linear thread index in the block
  dim3 idx;
  Context context;
  Resources resources;  // stack and TSan identity, from the start to the end
  void* asan_fake_stack = nullptr;
  bool started = false;
  Wait wait = Wait::running;
  const char* what = "";  // the collective it waits in, for messages
  Location where;
  unsigned generation = 0;  // of the barrier it waits at
  std::string error;        // its kernel code threw
};

struct Warp {
  unsigned lanes = 0, arrived = 0, generation = 0;
  const char* what = nullptr;  // the collective being gathered
  Location where;
  std::uint64_t slots[2][kWarp] = {};  // shuffle values by generation parity
};

class Block;
thread_local Block* current_block = nullptr;

void fiber_main();

class Block {
 public:
  Block(Grid& grid, unsigned linear)
      : grid_(grid), idx_(unflatten(linear, grid.config.grid)) {
    const unsigned n = static_cast<unsigned>(volume(grid.config.block));
    fibers_.resize(n);
    for (unsigned t = 0; t < n; ++t) {
      fibers_[t].rank = t;
      fibers_[t].idx = unflatten(t, grid.config.block);
    }
    warps_.resize((n + kWarp - 1) / kWarp);
    for (unsigned w = 0; w < warps_.size(); ++w) warps_[w].lanes = std::min(kWarp, n - w * kWarp);
    anchors_.reset(new char[3 + 2 * warps_.size()]);
    shared_ = grid.new_shared();
    live_ = n;
  }

  ~Block() {
    for (Fiber& f : fibers_)  // abandoned mid-kernel after an error
      if (f.started) resource_pool().discard(std::move(f.resources));
  }

  // Runs every thread of the block to its end; throws Error on misuse.
  void run() {
    current_block = this;
    struct Reset {
      ~Reset() { current_block = nullptr; }
    } reset;
    scheduler_tsan_ = tsan_current();
    // The block's shared memory was allocated and filled here; its threads
    // (TSan fibers pooled from earlier launches) must see that.
    tsan_release(start_anchor());
    for (unsigned t = 0; t < fibers_.size(); ++t) ready_.push_back(t);
    for (;;) {
      while (!ready_.empty()) {
        Fiber& f = fibers_[ready_.front()];
        ready_.pop_front();
        resume(f);
        after_suspend(f);
      }
      if (live_ == 0) return;
      if (grid_waiting_ == live_) {
        grid_.barrier(idx_);
        release_all(Wait::grid);
        grid_waiting_ = 0;
        continue;
      }
      throw Error(deadlock_message());
    }
  }

  // --------------------------------------- called from the running fiber
  Fiber& running() {
    if (running_ == nullptr) throw Error("SIMT: a CUDA built-in used outside a kernel");
    return *running_;
  }
  const dim3& idx() const { return idx_; }
  Grid& grid() { return grid_; }
  void* shared() const { return shared_; }

  void sync_threads(Location where) {
    Fiber& f = enter(Wait::block_barrier, "__syncthreads()", where);
    f.generation = barrier_generation_;
    tsan_release(block_anchor(f.generation));
    suspend(f);
    tsan_acquire(block_anchor(f.generation));
  }

  void sync_warp(unsigned mask, Location where) {
    Fiber& f = enter(Wait::warp, "__syncwarp()", where);
    check_full_warp(f, mask, kWarp);
    Warp& w = warp_of(f);
    f.generation = w.generation;
    tsan_release(warp_anchor(f));
    suspend(f);
    tsan_acquire(warp_anchor(f));
  }

  std::uint64_t shuffle(unsigned mask, std::uint64_t bits, ShuffleKind kind, int operand,
                        int width, Location where) {
    Fiber& f = enter(Wait::warp, "a warp shuffle", where);
    check_full_warp(f, mask, width);
    Warp& w = warp_of(f);
    const unsigned lane = f.rank % kWarp;
    f.generation = w.generation;
    w.slots[f.generation & 1][lane] = bits;
    suspend(f);  // no TSan edge: a shuffle orders no memory
    return w.slots[f.generation & 1][source_lane(lane, kind, operand, width)];
  }

  void sync_grid(Location where) {
    if (!grid_.config.cooperative)
      throw Error("SIMT: grid.sync() at " + where_str(where) +
                  " in a kernel not launched with cudaLaunchCooperativeKernel");
    Fiber& f = enter(Wait::grid, "grid.sync()", where);
    f.generation = grid_.generation();
    tsan_release(grid_.barrier_anchor(f.generation));
    suspend(f);
    tsan_acquire(grid_.barrier_anchor(f.generation));
  }

  // The fiber's kernel code returned (or threw): leave for good.
  [[noreturn]] void exit(Fiber& f) {
    tsan_release(grid_.end_anchor());
    f.wait = Wait::exited;
    tsan_switch(scheduler_tsan_);
    asan_start_switch(nullptr, scheduler_stack_, scheduler_stack_size_);
    switch_context(f.context, scheduler_);
    __builtin_unreachable();
  }

  // First code on a new fiber: learn the scheduler's stack for ASan; order the
  // thread after the launch and the block's setup.
  void started() {
    asan_finish_switch(nullptr, &scheduler_stack_, &scheduler_stack_size_);
    tsan_acquire(grid_.start_anchor());
    tsan_acquire(start_anchor());
  }

 private:
  // ------------------------------------------------------- scheduling
  void resume(Fiber& f) {
    if (!f.started) {
      f.resources = resource_pool().take();
      prepare(f.context, stack(f).bottom(), stack(f).size(), &fiber_main);
      f.started = true;
    }
    f.wait = Wait::running;
    running_ = &f;
    tsan_switch(f.resources.tsan);
    asan_start_switch(&scheduler_fake_stack_, stack(f).bottom(), stack(f).size());
    switch_context(scheduler_, f.context);
    asan_finish_switch(scheduler_fake_stack_, nullptr, nullptr);
    running_ = nullptr;
  }

  void suspend(Fiber& f) {
    tsan_switch(scheduler_tsan_);
    asan_start_switch(&f.asan_fake_stack, scheduler_stack_, scheduler_stack_size_);
    switch_context(f.context, scheduler_);
    asan_finish_switch(f.asan_fake_stack, nullptr, nullptr);
  }

  Fiber& enter(Wait wait, const char* what, Location where) {
    if (grid_.aborted()) throw Error(kAborted);
    Fiber& f = running();
    f.wait = wait;
    f.what = what;
    f.where = where;
    return f;
  }

  void after_suspend(Fiber& f) {
    switch (f.wait) {
      case Wait::exited: return on_exit(f);
      case Wait::block_barrier: return on_block_barrier(f);
      case Wait::warp: return on_warp(f);
      case Wait::grid: return on_grid(f);
      case Wait::running: break;
    }
    throw Error("SIMT: internal error: fiber suspended while running");
  }

  void on_exit(Fiber& f) {
    if (!f.error.empty()) throw Error(thread_str(f) + ": " + f.error);
    --live_;
    ++exited_;
    retire(f);
    if (barrier_arrived_ > 0)
      throw Error(thread_str(f) + " exited while " + std::to_string(barrier_arrived_) +
                  " thread(s) of its block wait at __syncthreads() (" +
                  where_str(barrier_where_) + ")");
    const Warp& w = warp_of(f);
    if (w.arrived > 0)
      throw Error(thread_str(f) + " exited while " + std::to_string(w.arrived) +
                  " lane(s) of its warp wait in " + w.what + " (" + where_str(w.where) + ")");
    if (grid_waiting_ > 0)
      throw Error(thread_str(f) + " exited while " + std::to_string(grid_waiting_) +
                  " thread(s) of its block wait at grid.sync()");
  }

  void on_block_barrier(Fiber& f) {
    if (exited_ > 0)
      throw Error(thread_str(f) + " reached __syncthreads() (" + where_str(f.where) + ") after " +
                  std::to_string(exited_) + " thread(s) of its block exited");
    if (barrier_arrived_ > 0 && !same_site(f.where, barrier_where_))
      throw Error("SIMT: divergent __syncthreads() in block " + dim_str(idx_) + ": " +
                  where_str(barrier_where_) + " and " + where_str(f.where));
    barrier_where_ = f.where;
    if (++barrier_arrived_ < fibers_.size()) return;
    barrier_arrived_ = 0;
    ++barrier_generation_;
    release_all(Wait::block_barrier);
  }

  void on_warp(Fiber& f) {
    Warp& w = warp_of(f);
    const bool is_sync = std::strcmp(f.what, "__syncwarp()") == 0;
    if (w.arrived > 0 && (w.what != f.what || (!is_sync && !same_site(f.where, w.where))))
      throw Error("SIMT: divergent warp collective in block " + dim_str(idx_) + " warp " +
                  std::to_string(f.rank / kWarp) + ": " + w.what + " (" + where_str(w.where) +
                  ") and " + f.what + " (" + where_str(f.where) + ")");
    if (w.arrived == 0) {
      w.what = f.what;
      w.where = f.where;
    }
    if (++w.arrived < w.lanes) return;
    w.arrived = 0;
    ++w.generation;
    const unsigned first = (f.rank / kWarp) * kWarp;
    for (unsigned t = first; t < first + w.lanes; ++t) ready_.push_back(t);
  }

  void on_grid(Fiber& f) {
    if (exited_ > 0)
      throw Error(thread_str(f) + " reached grid.sync() (" + where_str(f.where) + ") after " +
                  std::to_string(exited_) + " thread(s) of its block exited");
    ++grid_waiting_;
  }

  void release_all(Wait wait) {
    for (const Fiber& f : fibers_)
      if (f.wait == wait) ready_.push_back(f.rank);
  }

  // A thread ran to its end: its resources go back to the pool, at once or
  // (TSan) when the launch ends.
  void retire(Fiber& f) {
    f.started = false;
    if (kDistinctPerLaunch)
      grid_.hold(std::move(f.resources));
    else
      resource_pool().give(std::move(f.resources));
  }

  static const Stack& stack(const Fiber& f) { return f.resources.stack; }

  // ------------------------------------------------------------ checks
  void check_full_warp(const Fiber& f, unsigned mask, int width) {
    const Warp& w = warp_of(f);
    if (mask != kFullMask)
      throw Error("SIMT: " + std::string(f.what) + " at " + where_str(f.where) + " with mask 0x" +
                  hex(mask) + ": only the full mask is emulated (no divergence on fibers)");
    if (w.lanes != kWarp)
      throw Error("SIMT: " + std::string(f.what) + " at " + where_str(f.where) +
                  " with the full mask in a warp of " + std::to_string(w.lanes) + " threads");
    if (width < 1 || width > static_cast<int>(kWarp) || (width & (width - 1)) != 0)
      throw Error("SIMT: shuffle width " + std::to_string(width) + " at " + where_str(f.where) +
                  " is not a power of two up to 32");
  }

  static unsigned source_lane(unsigned lane, ShuffleKind kind, int operand, int width) {
    const unsigned w = static_cast<unsigned>(width), base = lane & ~(w - 1);
    const long long target =
        kind == ShuffleKind::index  ? base + (static_cast<unsigned>(operand) % w)
        : kind == ShuffleKind::up   ? static_cast<long long>(lane) - operand
        : kind == ShuffleKind::down ? static_cast<long long>(lane) + operand
                                    : lane ^ static_cast<unsigned>(operand);
    if (target < base || target >= base + w) return lane;  // CUDA keeps the lane's own value
    return static_cast<unsigned>(target);
  }

  static bool same_site(const Location& a, const Location& b) {
    return a.line() == b.line() && a.column() == b.column() &&
           std::strcmp(a.file_name(), b.file_name()) == 0;
  }

  static std::string hex(unsigned v) {
    std::ostringstream s;
    s << std::hex << v;
    return s.str();
  }

  std::string thread_str(const Fiber& f) const {
    return "SIMT: thread " + dim_str(f.idx) + " of block " + dim_str(idx_);
  }

  std::string deadlock_message() const {
    std::map<std::string, unsigned> waits;
    for (const Fiber& f : fibers_)
      if (f.wait != Wait::exited) ++waits[std::string(f.what) + " at " + where_str(f.where)];
    std::string msg = "SIMT: deadlock in block " + dim_str(idx_) + ": no thread can proceed;";
    for (const auto& [what, count] : waits)
      msg += " " + std::to_string(count) + " wait in " + what + ";";
    if (exited_ > 0) msg += " " + std::to_string(exited_) + " exited";
    return msg;
  }

  Warp& warp_of(const Fiber& f) { return warps_[f.rank / kWarp]; }
  const Warp& warp_of(const Fiber& f) const { return warps_[f.rank / kWarp]; }
  // anchors_: __syncthreads by generation parity, block start, __syncwarp of
  // each warp by generation parity.
  void* block_anchor(unsigned generation) { return &anchors_[generation & 1]; }
  void* start_anchor() { return &anchors_[2]; }
  void* warp_anchor(const Fiber& f) {
    return &anchors_[3 + 2 * (f.rank / kWarp) + (f.generation & 1)];
  }

  Grid& grid_;
  const dim3 idx_;
  std::vector<Fiber> fibers_;
  std::vector<Warp> warps_;
  std::unique_ptr<char[]> anchors_;  // TSan sync objects of the block's barriers
  void* shared_ = nullptr;
  std::deque<unsigned> ready_;
  Fiber* running_ = nullptr;
  unsigned live_ = 0, exited_ = 0, grid_waiting_ = 0;
  unsigned barrier_arrived_ = 0, barrier_generation_ = 0;
  Location barrier_where_;
  Context scheduler_;
  void* scheduler_tsan_ = nullptr;
  void* scheduler_fake_stack_ = nullptr;
  const void* scheduler_stack_ = nullptr;
  std::size_t scheduler_stack_size_ = 0;
};

void fiber_main() {
  Block& block = *current_block;
  block.started();
  Fiber& f = block.running();
  try {
    block.grid().body();
  } catch (const std::exception& e) {
    f.error = e.what();
  } catch (...) {
    f.error = "unknown exception";
  }
  block.exit(f);
}

Block& this_block() {
  if (current_block == nullptr) throw Error("SIMT: a CUDA built-in used outside a kernel");
  return *current_block;
}

// ------------------------------------------------------------- launches

void check_config(const LaunchConfig& c, const Device& d, std::int64_t shared_limit) {
  const std::size_t threads = volume(c.block);
  if (c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0 || c.grid.y > 65535 || c.grid.z > 65535 ||
      c.grid.x > 0x7fffffffu)
    throw Error("SIMT: invalid grid " + dim_str(c.grid) + " (cudaErrorInvalidConfiguration)");
  if (threads == 0 || threads > static_cast<std::size_t>(d.max_threads_per_block) ||
      c.block.z > 64)
    throw Error("SIMT: invalid block " + dim_str(c.block) + " (cudaErrorInvalidConfiguration)");
  if (static_cast<std::int64_t>(c.dynamic_shared) > shared_limit)
    throw Error("SIMT: " + std::to_string(c.dynamic_shared) +
                " bytes of dynamic shared memory exceed this kernel's limit of " +
                std::to_string(shared_limit) +
                " (cudaFuncSetAttribute(MaxDynamicSharedMemorySize) raises it, up to " +
                std::to_string(d.shared_per_block_optin) + ")");
}

void run_blocks(Grid& grid) {
  for (unsigned b = 0; b < grid.blocks; ++b) {
    Block block(grid, b);
    block.run();
  }
}

void run_cooperative(Grid& grid) {
  std::vector<std::thread> threads;
  threads.reserve(grid.blocks);
  auto run_block = [&grid](unsigned b) {
    try {
      Block block(grid, b);
      block.run();
      grid.block_finished(block.idx());
    } catch (const std::exception& e) {
      grid.fail(e.what());
    }
  };
  try {
    for (unsigned b = 0; b < grid.blocks; ++b) threads.emplace_back(run_block, b);
  } catch (const std::system_error& e) {
    grid.fail(std::string("SIMT: cannot start a thread per block: ") + e.what());
  }
  for (std::thread& t : threads) t.join();
  if (!grid.error().empty()) throw Error(grid.error());
}

}  // namespace

// ============================================================ public API

dim3 thread_idx() { return this_block().running().idx; }
dim3 block_idx() { return this_block().idx(); }
dim3 block_dim() { return this_block().grid().config.block; }
dim3 grid_dim() { return this_block().grid().config.grid; }
void* dynamic_shared_memory() { return this_block().shared(); }
void sync_threads(Location where) { this_block().sync_threads(where); }
void sync_warp(unsigned mask, Location where) { this_block().sync_warp(mask, where); }
void sync_grid(Location where) { this_block().sync_grid(where); }

std::uint64_t shuffle(unsigned mask, std::uint64_t bits, ShuffleKind kind, int operand, int width,
                      Location where) {
  return this_block().shuffle(mask, bits, kind, operand, width, where);
}

Device device() {
  Globals& g = globals();
  std::lock_guard<std::mutex> lock(g.mu);
  return g.device;
}

void set_device(const Device& d) {
  if (d.sm_count < 1 || d.shared_per_block < 0 || d.shared_per_block_optin < d.shared_per_block ||
      d.shared_per_sm < d.shared_per_block_optin || d.max_threads_per_sm < 32 ||
      d.max_threads_per_block < 1 || d.max_blocks_per_sm < 1)
    throw Error("SIMT: inconsistent emulated device");
  Globals& g = globals();
  std::lock_guard<std::mutex> lock(g.mu);
  g.device = d;
}

void set_watchdog_seconds(double seconds) {
  if (!(seconds > 0)) throw Error("SIMT: the watchdog needs a positive number of seconds");
  Globals& g = globals();
  std::lock_guard<std::mutex> lock(g.mu);
  g.watchdog_seconds = seconds;
}

double watchdog_seconds() {
  Globals& g = globals();
  std::lock_guard<std::mutex> lock(g.mu);
  return g.watchdog_seconds;
}

void set_max_dynamic_shared(KernelId kernel, std::int64_t bytes) {
  Globals& g = globals();
  std::lock_guard<std::mutex> lock(g.mu);
  if (bytes < 0 || bytes > g.device.shared_per_block_optin)
    throw Error("SIMT: cudaFuncSetAttribute(MaxDynamicSharedMemorySize, " + std::to_string(bytes) +
                ") beyond the device's " + std::to_string(g.device.shared_per_block_optin) +
                " bytes per block (cudaErrorInvalidValue)");
  g.max_dynamic_shared[kernel] = bytes;
}

int max_active_blocks_per_sm(KernelId, int threads, std::int64_t dynamic_shared) {
  const Device d = device();
  if (threads < 1 || threads > d.max_threads_per_block) return 0;
  const int warps = (threads + 31) / 32;
  int blocks = std::min(d.max_blocks_per_sm, d.max_threads_per_sm / (warps * 32));
  constexpr std::int64_t kGranule = 128;  // shared memory allocation unit
  const std::int64_t per_block =
      (dynamic_shared + d.reserved_shared_per_block + kGranule - 1) / kGranule * kGranule;
  if (dynamic_shared > d.shared_per_block_optin) return 0;
  blocks = static_cast<int>(std::min<std::int64_t>(blocks, d.shared_per_sm / per_block));
  return std::max(blocks, 0);
}

bool run(const LaunchConfig& config, const std::function<void()>& thread_body) {
  if (current_block != nullptr)
    throw Error("SIMT: a kernel launched from inside a kernel (not emulated)");
  Globals& g = globals();
  Device d;
  std::int64_t shared_limit;
  {
    std::lock_guard<std::mutex> lock(g.mu);
    d = g.device;
    const auto attr = g.max_dynamic_shared.find(config.kernel);
    shared_limit = attr == g.max_dynamic_shared.end() ? d.shared_per_block : attr->second;
  }
  check_config(config, d, shared_limit);
  if (config.cooperative) {
    if (!d.cooperative_launch) throw Error("SIMT: the emulated device has no cooperative launch");
    const int per_sm =
        max_active_blocks_per_sm(config.kernel, static_cast<int>(volume(config.block)),
                                 static_cast<std::int64_t>(config.dynamic_shared));
    if (volume(config.grid) > std::size_t(per_sm) * std::size_t(d.sm_count)) return false;
  }
  {
    std::lock_guard<std::mutex> lock(g.mu);
    ++g.launches[config.kernel];
  }
  Grid grid(config, thread_body);
  tsan_release(grid.start_anchor());
  if (config.cooperative)
    run_cooperative(grid);
  else
    run_blocks(grid);
  tsan_acquire(grid.end_anchor());
  return true;
}

std::vector<std::pair<KernelId, std::int64_t>> launch_counts() {
  Globals& g = globals();
  std::lock_guard<std::mutex> lock(g.mu);
  return {g.launches.begin(), g.launches.end()};
}

void reset_launch_counts() {
  Globals& g = globals();
  std::lock_guard<std::mutex> lock(g.mu);
  g.launches.clear();
}

Buffer::Buffer(std::size_t bytes) : data_(nullptr) {
  if (posix_memalign(&data_, 256, bytes) != 0) throw Error("SIMT: out of memory");
  std::memset(data_, 0xFF, bytes);
}

Buffer::~Buffer() { std::free(data_); }

}  // namespace fusedrnn::simt
