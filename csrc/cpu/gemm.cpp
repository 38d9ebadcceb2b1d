#include "cpu/gemm.h"

#include <ATen/Version.h>
#include <ATen/native/CPUBlas.h>
#include <c10/util/Exception.h>
#include <omp.h>

#include <algorithm>
#include <memory>

namespace fusedrnn::cpu {
namespace {

// A big GEMM's tiles: kTileM rows of C by a panel of up to kPanel columns
// of B (whole column blocks), in depth steps of kDepth (a 256 KB packed
// slice of the panel, kept in L2 while the tiles' rows pass; each tile of A,
// 64 KB, stays in cache across the panel's blocks).
constexpr int64_t kTileM = 64, kDepth = 256, kPanel = 256;
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

int64_t block_width() {
  static const int64_t width = at::get_cpu_capability() == "AVX512" ? 64 : 32;
  return width;
}

template <typename T>
int64_t BlockedPanel<T>::width(int64_t b) const {
  return std::min(block_, N_ - b * block_);
}

template <typename T>
void BlockedPanel<T>::set_column(int64_t n, const T* src, int64_t src_stride) {
  const int64_t b = n / block_, w = width(b);
  T* dst = block(b) + (n - b * block_);
  for (int64_t k = 0; k < K_; ++k) dst[k * w] = src[k * src_stride];
}

template <typename T>
void BlockedPanel<T>::set_row(int64_t k, const T* src) {
  for (int64_t b = 0; b * block_ < N_; ++b) {
    const int64_t w = width(b);
    std::copy_n(src + b * block_, w, block(b) + k * w);
  }
}

template <typename T>
void BlockedPanel<T>::multiply(int64_t M, const T* A, int64_t lda, T* C, int64_t ldc,
                               bool accumulate) const {
  if (M == 0) return;
  for (int64_t b = 0; b * block_ < N_; ++b) {
    const int64_t w = width(b);
    if (K_ == 0) {
      if (!accumulate)
        for (int64_t m = 0; m < M; ++m) std::fill_n(C + m * ldc + b * block_, w, T(0));
      continue;
    }
    micro_gemm(M, w, K_, A, lda, block(b), w, C + b * block_, ldc, accumulate);
  }
}

template class BlockedPanel<float>;
template class BlockedPanel<double>;

// -------------------------------------------------------------------- gemm

namespace {

// B's (depth x width) slice at rows k0.., columns n0.., packed row-major.
void pack_slice(const float* B, int64_t ldb, bool b_transposed, int64_t k0, int64_t depth,
                int64_t n0, int64_t width, float* dst) {
  if (b_transposed) {  // B^T is N x K: walk each column of B along its row of B^T
    for (int64_t j = 0; j < width; ++j) {
      const float* src = B + (n0 + j) * ldb + k0;
      for (int64_t k = 0; k < depth; ++k) dst[k * width + j] = src[k];
    }
  } else {
    for (int64_t k = 0; k < depth; ++k)
      std::copy_n(B + (k0 + k) * ldb + n0, width, dst + k * width);
  }
}

}  // namespace

void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
          int64_t ldb, bool b_transposed, float* C, int64_t ldc, bool accumulate) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (!accumulate)
      for (int64_t m = 0; m < M; ++m) std::fill_n(C + m * ldc, N, 0.0f);
    return;
  }
  // Panels of whole blocks, as even as they can be (N = 800 at 32 columns a
  // block: 224, 224, 224, 128; not 256, 256, 256, 32, which would leave one
  // thread most of the work).
  const int64_t block = block_width(), most = kPanel / block * block;
  const int64_t panel_width = ceil_div(ceil_div(N, ceil_div(N, most)), block) * block;
  const int64_t panels = ceil_div(N, panel_width);
  const int64_t tiles_m = ceil_div(M, kTileM), tiles = tiles_m * panels;
  const int64_t by_work = std::max<int64_t>(1, M * N * K / kMinFmasPerThread);
  const int threads = static_cast<int>(std::min<int64_t>(
      {omp_in_parallel() ? 1 : omp_get_max_threads(), tiles, by_work}));
  // Tile t: panel t / tiles_m, rows (t % tiles_m) * kTileM.., and its share
  // of the work (its area of C; the last row tile and panel may be smaller).
  auto tile_area = [&](int64_t t) {
    const int64_t m0 = (t % tiles_m) * kTileM, n0 = (t / tiles_m) * panel_width;
    return std::min(kTileM, M - m0) * std::min(panel_width, N - n0);
  };
  // The first tile of thread `tid`'s range: ranges of equal area, whole tiles.
  auto first_tile = [&](int64_t tid, int64_t team) {
    const int64_t target = (M * N * tid + team - 1) / team;
    int64_t t = 0;
    for (int64_t area = 0; t < tiles && area < target; ++t) area += tile_area(t);
    return t;
  };

  // Each thread takes a contiguous range of tiles, ordered panel by panel.
  // For each panel in its range it packs B one depth slice at a time into its
  // own buffer (kDepth x kPanel as column blocks, 256 KB, in L2) and runs its
  // tiles of that panel over it, each tile of A once over all the panel's
  // blocks while it is in cache: no copy of the whole of B (the weight
  // gradients' B has steps x batch rows).
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const int64_t team = omp_get_num_threads(), tid = omp_get_thread_num();
    const int64_t first = first_tile(tid, team), last = first_tile(tid + 1, team);
    // Kept by the thread for its next GEMM: no allocation per call.
    thread_local const auto slice = std::make_unique_for_overwrite<float[]>(kDepth * kPanel);
    for (int64_t t = first; t < last;) {
      const int64_t p = t / tiles_m, n0 = p * panel_width, width = std::min(panel_width, N - n0);
      const int64_t tile_end = std::min(last, (p + 1) * tiles_m);
      for (int64_t k0 = 0; k0 < K; k0 += kDepth) {
        const int64_t depth = std::min(kDepth, K - k0);
        for (int64_t b0 = 0; b0 < width; b0 += block)
          pack_slice(B, ldb, b_transposed, k0, depth, n0 + b0, std::min(block, width - b0),
                     slice.get() + b0 * depth);
        for (int64_t tile = t; tile < tile_end; ++tile) {
          const int64_t m0 = (tile % tiles_m) * kTileM, rows = std::min(kTileM, M - m0);
          for (int64_t b0 = 0; b0 < width; b0 += block) {
            const int64_t w = std::min(block, width - b0);
            micro_gemm(rows, w, depth, A + m0 * lda + k0, lda, slice.get() + b0 * depth, w,
                       C + m0 * ldc + n0 + b0, ldc, accumulate || k0 > 0);
          }
        }
      }
      t = tile_end;
    }
    release_gemm_thread();
  }
}

}  // namespace fusedrnn::cpu
