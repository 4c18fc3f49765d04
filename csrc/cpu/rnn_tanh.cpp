// CPU kernels of the fused tanh RNN: big products through ATen, the two sequential sweeps
// through BLAS called directly, elementwise work vectorised once per CPU capability
// (pointwise.h) and split with at::parallel_for.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <thread>

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#endif

#include "../rnn_tanh.h"
#include "pointwise.h"

// The per-step product is small ([B, H] x [H, H]); through at::mm it pays a few µs of
// dispatch, view and shape bookkeeping every step, which at B=1..32 costs more than the
// product itself. Fortran BLAS is what at::mm ends in on CPU (MKL in the x86 wheels,
// OpenBLAS elsewhere), and libtorch_cpu exports it, so the sweeps call it straight.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc);
}

namespace charrnn {
namespace {

void blas_gemm(const char* ta, const char* tb, int m, int n, int k, const float* a, int lda,
               const float* b, int ldb, float beta, float* c, int ldc) {
  const float one = 1.f;
  sgemm_(ta, tb, &m, &n, &k, &one, a, &lda, b, &ldb, &beta, c, &ldc);
}
void blas_gemm(const char* ta, const char* tb, int m, int n, int k, const double* a, int lda,
               const double* b, int ldb, double beta, double* c, int ldc) {
  const double one = 1.0;
  dgemm_(ta, tb, &m, &n, &k, &one, a, &lda, b, &ldb, &beta, c, &ldc);
}

// Each step is split by hidden units (columns of h_t) across threads: a thread multiplies
// its rows of w_hh and applies the pointwise part to its own columns while they are still in
// cache, so a step costs one parallel region. BLAS runs single-threaded inside it (MKL and
// OpenBLAS do when called from a parallel region), and below kSerialStepWork multiply-adds
// a step stays on the calling thread, where waking the pool would cost more than it saves.
constexpr int64_t kSerialStepWork = 1 << 17;

// torch.set_flush_denormal sets flush-to-zero on the calling thread only. Vanishing BPTT
// gradients reach denormal floats, which cost ~100x per operation, so the pool threads take
// the caller's setting for the length of a step.
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

int64_t column_grain(int64_t B, int64_t H) {
  return B * H * H < kSerialStepWork ? H : std::max<int64_t>(8, kSerialStepWork / (B * H));
}

// h_t = tanh(h_t + h_prev w_hh^T) for h_t, h_prev [B, H] row-major, h_t holding the input
// projection. BLAS is column-major, where a row-major buffer reads as its transpose: the
// columns [j0, j1) of h_t are rows of h_t^T = w_hh[j0:j1] h_prev^T, w_hh's rows read "T".
template <typename scalar_t>
void forward_step(const scalar_t* h_prev, const scalar_t* w_hh, scalar_t* h_t, int64_t B,
                  int64_t H) {
  const auto& pointwise = cpu::pointwise<scalar_t>();
  const CallerFpMode fp_mode;
  at::parallel_for(0, H, column_grain(B, H), [&](int64_t j0, int64_t j1) {
    const auto fp_scope = fp_mode.apply();
    const int n = static_cast<int>(j1 - j0);
    blas_gemm("T", "N", n, B, H, w_hh + j0 * H, H, h_prev, H, scalar_t(1), h_t + j0, H);
    pointwise.tanh(h_t + j0, B, n, H);
  });
}

// a_t = (a_t + extra + a_next w_hh) * (1 - h_t^2) for [B, H] row-major buffers; a_t holds
// g_t on entry; extra (g_n) and a_next may be null. Columns [j0, j1) of a_next w_hh are
// (w_hh[:, j0:j1])^T a_next^T in column-major, w_hh's columns read "N" from offset j0.
template <typename scalar_t>
void backward_step(const scalar_t* a_next, const scalar_t* extra, const scalar_t* h_t,
                   const scalar_t* w_hh, scalar_t* a_t, int64_t B, int64_t H) {
  const auto& pointwise = cpu::pointwise<scalar_t>();
  const CallerFpMode fp_mode;
  at::parallel_for(0, H, column_grain(B, H), [&](int64_t j0, int64_t j1) {
    const auto fp_scope = fp_mode.apply();
    const int n = static_cast<int>(j1 - j0);
    if (a_next) blas_gemm("N", "N", n, B, H, w_hh + j0, H, a_next, H, scalar_t(1), a_t + j0, H);
    pointwise.tanh_grad(a_t + j0, extra ? extra + j0 : nullptr, h_t + j0, B, n, H);
  });
}

// Rows of a that the products of the overlapped backward take at a time: enough for the
// GEMMs to run near their full rate.
constexpr int64_t kProductChunkRows = 512;

// The backward's products that need only finished a_t, for the steps [t0, t1): dx rows,
// and accumulations into dw_ih, dw_hh and db (which start at zero). Row-major buffers;
// column-major BLAS reads each as its transpose (see forward_step).
template <typename scalar_t>
struct WindowProducts {
  const scalar_t *a, *x, *h0, *output, *w_ih;  // [T, B, H], [T, B, E], [B, H], [T, B, H], [H, E]
  scalar_t *dx, *dw_ih, *dw_hh, *db;            // [T, B, E], [H, E], [H, H], [H]
  int64_t B, E, H;

  void operator()(int64_t t0, int64_t t1) const {
    const int rows = static_cast<int>((t1 - t0) * B);
    const scalar_t* a_c = a + t0 * B * H;
    if (E > 0) {
      const int ld = static_cast<int>(E);
      // dx_c = a_c w_ih ; dw_ih += a_c^T x_c
      blas_gemm("N", "N", ld, rows, H, w_ih, ld, a_c, H, scalar_t(0), dx + t0 * B * E, ld);
      blas_gemm("N", "T", ld, H, rows, x + t0 * B * E, ld, a_c, H, scalar_t(1), dw_ih, ld);
    }
    // dw_hh += a_c^T h_prev, where h_prev of step 0 is h0 and of step t is output[t - 1]
    if (t0 == 0) {
      blas_gemm("N", "T", H, H, B, h0, H, a_c, H, scalar_t(1), dw_hh, H);
      if (t1 > 1)
        blas_gemm("N", "T", H, H, rows - B, output, H, a_c + B * H, H, scalar_t(1), dw_hh, H);
    } else {
      blas_gemm("N", "T", H, H, rows, output + (t0 - 1) * B * H, H, a_c, H, scalar_t(1), dw_hh, H);
    }
    for (int64_t r = 0; r < rows; ++r)  // db += column sums of a_c
      for (int64_t j = 0; j < H; ++j) db[j] += a_c[r * H + j];
  }
};

void check_blas_size(int64_t n, const char* what) {
  TORCH_CHECK_VALUE(n <= std::numeric_limits<int>::max(), "charrnn: ", what, " = ", n,
                    " exceeds the 32-bit BLAS index range");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> rnn_tanh_forward_cpu(
    const at::Tensor& x_in, const at::Tensor& h0_in, const at::Tensor& w_ih_in,
    const at::Tensor& w_hh_in, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh) {
  check_forward_args(x_in, h0_in, w_ih_in, w_hh_in, b_ih, b_hh);
  const at::Tensor x = x_in.contiguous(), h0 = h0_in.contiguous(),
                   w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  const int64_t T = x.size(0), B = x.size(1), H = w_hh.size(0);
  check_blas_size(B * H, "B * H");

  // The sweep adds h_{t-1} w_hh^T into each step's slice of the projection and applies tanh.
  at::Tensor output = input_projection(x, w_ih, b_ih, b_hh);

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnn_tanh_forward_cpu", [&] {
    scalar_t* out = output.data_ptr<scalar_t>();
    const scalar_t* w = w_hh.const_data_ptr<scalar_t>();
    const scalar_t* h_prev = h0.const_data_ptr<scalar_t>();
    for (int64_t t = 0; t < T; ++t) {
      forward_step(h_prev, w, out + t * B * H, B, H);
      h_prev = out + t * B * H;
    }
  });
  return {output, output[T - 1].clone()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_tanh_backward_cpu(
    const at::Tensor& grad_output_in, const at::Tensor& grad_h_n_in, const at::Tensor& x_in,
    const at::Tensor& h0_in, const at::Tensor& w_ih_in, const at::Tensor& w_hh_in,
    const at::Tensor& output_in) {
  check_backward_args(grad_output_in, grad_h_n_in, x_in, h0_in, w_ih_in, w_hh_in, output_in);
  const at::Tensor x = x_in.contiguous(), h0 = h0_in.contiguous(),
                   w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous(),
                   output = output_in.contiguous(), grad_h_n = grad_h_n_in.contiguous();
  const int64_t T = x.size(0), B = x.size(1), E = x.size(2), H = w_hh.size(0);
  check_blas_size(B * H, "B * H");
  check_blas_size(T * B, "T * B");  // the window products take all T * B rows at once

  // a_t = (g_t + a_{t+1} w_hh) * (1 - h_t^2), built in place over a copy of grad_output.
  // One allocation even when grad_output is an expanded view (the gradient of out.sum()).
  at::Tensor a = grad_output_in.clone(at::MemoryFormat::Contiguous);
  at::Tensor dx = at::empty({T, B, E}, x.options()), dh0 = at::empty({B, H}, x.options());
  at::Tensor dw_ih = at::zeros({H, E}, x.options()), dw_hh = at::zeros({H, H}, x.options());
  at::Tensor db = at::zeros({H}, x.options());

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnn_tanh_backward_cpu", [&] {
    scalar_t* a_ptr = a.data_ptr<scalar_t>();
    const scalar_t* h = output.const_data_ptr<scalar_t>();
    const scalar_t* w = w_hh.const_data_ptr<scalar_t>();
    const int64_t step = B * H;
    std::atomic<int64_t> lowest_done{T};  // a_t is final for every t >= lowest_done

    auto sweep = [&] {
      backward_step<scalar_t>(nullptr, grad_h_n.const_data_ptr<scalar_t>(), h + (T - 1) * step, w,
                              a_ptr + (T - 1) * step, B, H);
      lowest_done.store(T - 1, std::memory_order_release);
      for (int64_t t = T - 2; t >= 0; --t) {
        backward_step<scalar_t>(a_ptr + (t + 1) * step, nullptr, h + t * step, w, a_ptr + t * step,
                                B, H);
        lowest_done.store(t, std::memory_order_release);
      }
      blas_gemm("N", "N", H, B, H, w, H, a_ptr, H, scalar_t(0), dh0.data_ptr<scalar_t>(), H);
    };
    const WindowProducts<scalar_t> products{a_ptr, x.const_data_ptr<scalar_t>(),
        h0.const_data_ptr<scalar_t>(), h, w_ih.const_data_ptr<scalar_t>(),
        dx.data_ptr<scalar_t>(), dw_ih.data_ptr<scalar_t>(), dw_hh.data_ptr<scalar_t>(),
        db.data_ptr<scalar_t>(), B, E, H};

    if (at::get_num_threads() != 2 || at::in_parallel_region()) {
      // Sweep (split across the pool), then the products as whole-window GEMMs, each
      // using every thread.
      sweep();
      products(0, T);
      return;
    }
    // Two threads: the sweep, whose steps are too small to use both cores well, runs on
    // one; the other computes the window products of each chunk of steps as soon as the
    // sweep has finished it, so the GEMMs hide behind the sweep.
    const int64_t chunk = std::clamp<int64_t>((kProductChunkRows + B - 1) / B, 1, T);
    const CallerFpMode fp_mode;
    at::parallel_for(0, 2, 1, [&](int64_t begin, int64_t end) {
      const auto fp_scope = fp_mode.apply();
      for (int64_t role = begin; role < end; ++role) {  // one thread: sweep first, then products
        if (role == 0) {
          sweep();
          continue;
        }
        for (int64_t t1 = T; t1 > 0;) {
          const int64_t t0 = std::max<int64_t>(0, t1 - chunk);
          while (lowest_done.load(std::memory_order_acquire) > t0) std::this_thread::yield();
          products(t0, t1);
          t1 = t0;
        }
      }
    });
  });
  return {dx, dh0, dw_ih, dw_hh, db};
}

TORCH_LIBRARY_IMPL(charrnn, CPU, m) {
  m.impl("rnn_tanh_forward", &rnn_tanh_forward_cpu);
  m.impl("rnn_tanh_backward", &rnn_tanh_backward_cpu);
}

}  // namespace charrnn
