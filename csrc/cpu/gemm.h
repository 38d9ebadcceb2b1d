// fp32 GEMM on oneDNN's brgemm micro-kernel, threaded with OpenMP.
//
// ATen's fp32 matmul goes to MKL, which runs its AVX2 code on AMD CPUs even
// where AVX-512 is there (half the peak on such machines), while torch.nn's
// own CPU LSTM runs oneDNN. oneDNN's brgemm micro-kernel, exported by ATen
// (at::native::cpublas::brgemm), JITs for the widest vectors the CPU has.
// These calls tile it over the output and spread the tiles over the threads.
#pragma once

#include <cstdint>

namespace fusedrnn::cpu {

// Whether this torch build has the fp32 micro-kernel; else the caller uses ATen.
bool have_brgemm();

// C (M x N, ldc) = A (M x K, lda) * B (K x N, ldb) (+ C when accumulate),
// all row-major. Threads over tiles of C unless already in a parallel region.
void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
          int64_t ldb, float* C, int64_t ldc, bool accumulate);

// C = A * B on one thread (the persistent loops' per-step product).
void gemm_one_thread(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                     const float* B, int64_t ldb, float* C, int64_t ldc, bool accumulate);

// Call once per thread that used gemm_one_thread, when it is done.
void release_gemm_thread();

}  // namespace fusedrnn::cpu
