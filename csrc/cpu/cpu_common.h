// What the CPU kernels share: the BLAS that at::addmm ends in, the caller's floating-point
// mode for pool threads, and the forward step of a tanh layer (the window kernel's sweep in
// rnn_tanh.cpp and the decode's step run the same one, so their floats agree).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#endif

// Fortran BLAS, as libtorch_cpu exports it (MKL in the x86 wheels, OpenBLAS elsewhere).
// at::native::cpublas::gemm calls these for float and double, but the wheels do not export
// it to extensions.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc);
}

namespace charrnn::cpu {

// c = a b + beta c in column-major BLAS terms, alpha 1.
inline void gemm(const char* ta, const char* tb, int m, int n, int k, const float* a, int lda,
                 const float* b, int ldb, float beta, float* c, int ldc) {
  const float one = 1.f;
  sgemm_(ta, tb, &m, &n, &k, &one, a, &lda, b, &ldb, &beta, c, &ldc);
}
inline void gemm(const char* ta, const char* tb, int m, int n, int k, const double* a, int lda,
                 const double* b, int ldb, double beta, double* c, int ldc) {
  const double one = 1.0;
  dgemm_(ta, tb, &m, &n, &k, &one, a, &lda, b, &ldb, &beta, c, &ldc);
}

// torch.set_flush_denormal sets flush-to-zero on the calling thread only (the trainer sets it);
// pool threads take the caller's mode for the length of a parallel region with apply().
class CallerFpMode {
 public:
#if defined(__SSE__) || defined(__x86_64__)
  CallerFpMode() : csr_(_mm_getcsr()) {}
  struct Scope {
    explicit Scope(unsigned csr) : saved(_mm_getcsr()) { _mm_setcsr(csr); }
    ~Scope() { _mm_setcsr(saved); }
    unsigned saved;
  };
  Scope apply() const { return Scope(csr_); }
 private:
  unsigned csr_;
#else
  struct Scope {};
  Scope apply() const { return {}; }
#endif
};

// Each step is split by hidden units (columns of h_t) across threads: a thread multiplies
// its rows of w_hh and applies the pointwise part to its own columns while they are still in
// cache, so a step costs one parallel region. BLAS runs single-threaded inside it (MKL and
// OpenBLAS do when called from a parallel region), and below kSerialStepWork multiply-adds
// a step stays on the calling thread, where waking the pool would cost more than it saves.
// The split decides which BLAS calls compute which columns, and with that their rounding.
constexpr int64_t kSerialStepWork = 1 << 17;

inline int64_t column_grain(int64_t B, int64_t H) {
  return B * H * H < kSerialStepWork ? H : std::max<int64_t>(8, kSerialStepWork / (B * H));
}

// h_t = tanh(h_t + h_prev w_hh^T) for h_t, h_prev [B, H] row-major, h_t holding the input
// projection. BLAS is column-major, where a row-major buffer reads as its transpose: the
// columns [j0, j1) of h_t are rows of h_t^T = w_hh[j0:j1] h_prev^T, w_hh's rows read "T".
template <typename scalar_t>
void forward_step(const scalar_t* h_prev, const scalar_t* w_hh, scalar_t* h_t, int64_t B,
                  int64_t H) {
  using Vec = at::vec::Vectorized<scalar_t>;
  const CallerFpMode fp_mode;
  at::parallel_for(0, H, column_grain(B, H), [&](int64_t j0, int64_t j1) {
    const auto fp_scope = fp_mode.apply();
    const int n = static_cast<int>(j1 - j0);
    gemm("T", "N", n, static_cast<int>(B), static_cast<int>(H), w_hh + j0 * H,
         static_cast<int>(H), h_prev, static_cast<int>(H), scalar_t(1), h_t + j0, static_cast<int>(H));
    for (int64_t b = 0; b < B; ++b) {
      scalar_t* row = h_t + b * H + j0;
      for (int64_t i = 0; i < n; i += Vec::size()) {
        const int64_t len = std::min<int64_t>(Vec::size(), n - i);
        Vec::loadu(row + i, len).tanh().store(row + i, len);
      }
    }
  });
}

}  // namespace charrnn::cpu
