#include "cpu/gemm.h"

#include <ATen/native/CPUBlas.h>
#include <c10/util/Exception.h>
#include <omp.h>

#include <algorithm>

namespace fusedrnn::cpu {
namespace {

// Tiles of C: rows x columns, and the depth of one micro-kernel call. A tile's
// B panel (kDepth x kTileN floats = 256 KB) stays in a core's L2 while the
// kernel walks the tile's rows.
constexpr int64_t kTileM = 64, kTileN = 256, kDepth = 256;
// Below this many multiply-adds a second thread costs more than it saves.
constexpr int64_t kMinFmasPerThread = 256 * 1024;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// One tile, depth-blocked: C_tile (+)= sum over depth blocks of A_blk * B_blk.
void gemm_tile(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
               int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  if (K == 0) {
    if (!accumulate)
      for (int64_t m = 0; m < M; ++m) std::fill_n(C + m * ldc, N, 0.0f);
    return;
  }
  for (int64_t k0 = 0; k0 < K; k0 += kDepth) {
    const int64_t depth = std::min(kDepth, K - k0);
    gemm_one_thread(M, N, depth, A + k0, lda, B + k0 * ldb, ldb, C, ldc, accumulate || k0 > 0);
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

void gemm_one_thread(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                     const float* B, int64_t ldb, float* C, int64_t ldc, bool accumulate) {
#ifdef CPUBLAS_BRGEMM_F32F32F32
  if (M == 0 || N == 0) return;
  at::native::cpublas::brgemm(M, N, K, lda, ldb, ldc, accumulate, A, B, C, /*is_vnni=*/false);
#else
  TORCH_CHECK(false, "fusedrnn: this torch build has no fp32 brgemm");
#endif
}

void release_gemm_thread() {
#ifdef CPUBLAS_BRGEMM_F32F32F32
  at::native::cpublas::brgemm_release(/*is_vnni=*/false);
#endif
}

void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
          int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  if (M == 0 || N == 0) return;
  const int64_t tiles_m = ceil_div(M, kTileM), tiles_n = ceil_div(N, kTileN);
  const int64_t tiles = tiles_m * tiles_n;
  const int64_t by_work = std::max<int64_t>(1, M * N * K / kMinFmasPerThread);
  const int threads = static_cast<int>(std::min<int64_t>(
      {omp_in_parallel() ? 1 : omp_get_max_threads(), tiles, by_work}));
  auto run_tile = [&](int64_t tile) {
    const int64_t m0 = (tile / tiles_n) * kTileM, n0 = (tile % tiles_n) * kTileN;
    gemm_tile(std::min(kTileM, M - m0), std::min(kTileN, N - n0), K, A + m0 * lda, lda, B + n0,
              ldb, C + m0 * ldc + n0, ldc, accumulate);
  };
  if (threads <= 1) {
    for (int64_t tile = 0; tile < tiles; ++tile) run_tile(tile);
    return;
  }
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t tile = 0; tile < tiles; ++tile) run_tile(tile);
}

}  // namespace fusedrnn::cpu
