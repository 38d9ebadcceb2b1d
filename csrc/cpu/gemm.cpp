#include "cpu/gemm.h"

#include <ATen/native/CPUBlas.h>
#include <c10/util/Exception.h>
#include <omp.h>

#include <algorithm>
#include <memory>

namespace fusedrnn::cpu {
namespace {

// A big GEMM's tiles: kTileM rows of C by one panel block, in depth steps of
// kDepth (a 128 KB slice of the block, kept in L2 while the tile's rows pass).
constexpr int64_t kTileM = 64, kDepth = 256;
// Below this many multiply-adds a second thread costs more than it saves.
constexpr int64_t kMinFmasPerThread = 256 * 1024;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// C (M x N, ldc) (+)= A (M x K, lda) @ B (K x N, ldb), one thread.
void micro_gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
                int64_t ldb, float* C, int64_t ldc, bool accumulate) {
#ifdef CPUBLAS_BRGEMM_F32F32F32
  at::native::cpublas::brgemm(M, N, K, lda, ldb, ldc, accumulate, A, B, C, /*is_vnni=*/false);
#else
  TORCH_CHECK(false, "fusedrnn: this torch build has no fp32 brgemm");
#endif
}

void micro_gemm(int64_t M, int64_t N, int64_t K, const double* A, int64_t lda, const double* B,
                int64_t ldb, double* C, int64_t ldc, bool accumulate) {
  for (int64_t m = 0; m < M; ++m) {
    double* c = C + m * ldc;
    if (!accumulate) std::fill_n(c, N, 0.0);
    for (int64_t k = 0; k < K; ++k) {
      const double a = A[m * lda + k];
      const double* b = B + k * ldb;
      for (int64_t n = 0; n < N; ++n) c[n] += a * b[n];  // vectorised by the compiler
    }
  }
}

}  // namespace

bool have_brgemm() {
#ifdef CPUBLAS_BRGEMM_F32F32F32
  return true;
#else
  return false;
#endif
}

void release_gemm_thread() {
#ifdef CPUBLAS_BRGEMM_F32F32F32
  at::native::cpublas::brgemm_release(/*is_vnni=*/false);
#endif
}

// ------------------------------------------------------------ BlockedPanel

template <typename T>
int64_t BlockedPanel<T>::width(int64_t b) const {
  return std::min(kBlock, N_ - b * kBlock);
}

template <typename T>
void BlockedPanel<T>::set_column(int64_t n, const T* src, int64_t src_stride) {
  const int64_t b = n / kBlock, w = width(b);
  T* dst = block(b) + (n - b * kBlock);
  for (int64_t k = 0; k < K_; ++k) dst[k * w] = src[k * src_stride];
}

template <typename T>
void BlockedPanel<T>::set_row(int64_t k, const T* src) {
  for (int64_t b = 0; b * kBlock < N_; ++b) {
    const int64_t w = width(b);
    std::copy_n(src + b * kBlock, w, block(b) + k * w);
  }
}

template <typename T>
void BlockedPanel<T>::multiply(int64_t M, const T* A, int64_t lda, T* C, int64_t ldc,
                               bool accumulate) const {
  if (M == 0) return;
  for (int64_t b = 0; b * kBlock < N_; ++b) {
    const int64_t w = width(b);
    if (K_ == 0) {
      if (!accumulate)
        for (int64_t m = 0; m < M; ++m) std::fill_n(C + m * ldc + b * kBlock, w, T(0));
      continue;
    }
    micro_gemm(M, w, K_, A, lda, block(b), w, C + b * kBlock, ldc, accumulate);
  }
}

template class BlockedPanel<float>;
template class BlockedPanel<double>;

// -------------------------------------------------------------------- gemm

void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
          int64_t ldb, bool b_transposed, float* C, int64_t ldc, bool accumulate) {
  if (M == 0 || N == 0) return;
  const int64_t blocks = ceil_div(N, BlockedPanel<float>::kBlock);
  const int64_t tiles_m = ceil_div(M, kTileM), tiles = tiles_m * blocks;
  const int64_t by_work = std::max<int64_t>(1, M * N * K / kMinFmasPerThread);
  const int threads = static_cast<int>(std::min<int64_t>(
      {omp_in_parallel() ? 1 : omp_get_max_threads(), tiles, by_work}));

  auto storage = std::make_unique_for_overwrite<float[]>(static_cast<size_t>(K * N));
  BlockedPanel<float> panel(storage.get(), K, N);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t n = 0; n < N; ++n) {
    if (b_transposed) {
      panel.set_column(n, B + n * ldb, 1);
    } else {
      panel.set_column(n, B + n, ldb);
    }
  }

  // Tile t: block t / tiles_m, rows (t % tiles_m) * kTileM..; consecutive
  // tiles of one thread share a block, which stays in its L2.
  auto run_tile = [&](int64_t t) {
    const int64_t b = t / tiles_m, m0 = (t % tiles_m) * kTileM;
    const int64_t rows = std::min(kTileM, M - m0), n0 = b * BlockedPanel<float>::kBlock;
    const int64_t w = std::min(BlockedPanel<float>::kBlock, N - n0);
    const float* blk = storage.get() + n0 * K;
    float* c = C + m0 * ldc + n0;
    if (K == 0 && !accumulate)
      for (int64_t m = 0; m < rows; ++m) std::fill_n(c + m * ldc, w, 0.0f);
    for (int64_t k0 = 0; k0 < K; k0 += kDepth)
      micro_gemm(rows, w, std::min(kDepth, K - k0), A + m0 * lda + k0, lda, blk + k0 * w, w, c,
                 ldc, accumulate || k0 > 0);
  };
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t t = 0; t < tiles; ++t) run_tile(t);
}

}  // namespace fusedrnn::cpu
