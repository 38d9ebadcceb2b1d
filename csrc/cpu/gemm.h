// GEMMs of the CPU path, on oneDNN's brgemm micro-kernel.
//
// ATen's fp32 matmul goes to MKL, which runs its AVX2 code on AMD CPUs even
// where AVX-512 is there (half the peak on such machines), while torch.nn's
// own CPU LSTM runs oneDNN. oneDNN's brgemm micro-kernel, exported by ATen
// (at::native::cpublas::brgemm), JITs for the widest vectors the CPU has.
//
// Right-hand operands are packed as column blocks (BlockedPanel): a block is
// read front to back even when the whole operand does not fit in a core's L2,
// which keeps the micro-kernel near its peak (measured 20-40% faster per call
// than one row-major operand of 1-2 MB). fp64 runs a plain loop (tests, not
// speed).
#pragma once

#include <cstdint>

namespace fusedrnn::cpu {

// Whether this torch build has the fp32 micro-kernel; else callers use ATen.
bool have_brgemm();

// Call once per thread that ran a GEMM here, when it is done.
void release_gemm_thread();

// The column-block width of the right-hand operands, for this CPU. AVX2: 32
// columns, a block of up to 256 rows (K) in a core's 32 KB L1; measured on
// an AVX2-only AMD EPYC against 64 (1.2-1.6x the micro-kernel's GFLOP/s at
// K = 256-512, and faster end to end) and 24 (faster per call from 4 rows up
// but not end to end). AVX-512: 64, the width its speed figures were
// measured with.
int64_t block_width();

// A K x N right-hand operand stored as column blocks of block_width()
// columns, each (K x width) row-major and contiguous; the last block may be
// narrower.
template <typename T>
class BlockedPanel {
 public:
  static int64_t elements(int64_t K, int64_t N) { return K * N; }

  BlockedPanel(T* storage, int64_t K, int64_t N)
      : data_(storage), K_(K), N_(N), block_(block_width()) {}

  // Column n of the panel from `src`, whose element k is src[k * src_stride].
  void set_column(int64_t n, const T* src, int64_t src_stride);
  // Row k of the panel from src[0..N).
  void set_row(int64_t k, const T* src);

  // C (M x N, ldc) = A (M x K, lda) @ panel (+ C when accumulate), on the
  // calling thread.
  void multiply(int64_t M, const T* A, int64_t lda, T* C, int64_t ldc, bool accumulate) const;

  int64_t rows() const { return K_; }
  int64_t cols() const { return N_; }

 private:
  int64_t width(int64_t b) const;
  T* block(int64_t b) const { return data_ + b * block_ * K_; }

  T* data_;
  int64_t K_, N_, block_;
};

// C (M x N, ldc) = A (M x K, lda) @ B (+ C when accumulate), fp32. B is K x N
// row-major with stride ldb, or, with b_transposed, N x K row-major (B^T).
// Spreads tiles of C over the threads (unless already in a parallel region);
// each thread packs the slices of B its tiles read, one L2-sized slice at a
// time.
void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
          int64_t ldb, bool b_transposed, float* C, int64_t ldc, bool accumulate);

// out[m, n] = bias[n] + sum_k a[m, k] w[n, k]: a few rows (a streaming step)
// times a weight matrix as torch stores it (N x K, row-major), one dot
// product per output. For these sizes ATen's GEMM is a GEMV in MKL, whose
// small-matrix path runs generic code on AMD CPUs, behind a dispatcher call.
template <typename T>
struct WeightProduct {
  int64_t rows, N, K;
  const T* a;  // (rows, K), row stride lda
  int64_t lda;
  const T* w;     // (N, K) contiguous
  const T* bias;  // (N), or nullptr
  T* out;         // (rows, N), row stride ldo
  int64_t ldo;
};

// The step loops take weight_product up to this many rows (a streaming
// step's batch). On the 2-core AVX2 AMD EPYC a GRU step (H = I = 128) ran in
// 21 us at 1 row and 35 us at 8 rows on it, 62 us at 9 rows on ATen's GEMM.
constexpr int64_t kMaxFewRows = 8;

// Runs p on the kernels of this CPU (row_kernels.h), spread over threads.
template <typename T>
void weight_product(const WeightProduct<T>& p);

}  // namespace fusedrnn::cpu
