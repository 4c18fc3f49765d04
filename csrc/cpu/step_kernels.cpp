// The step kernels of step_kernels.h for one CPU capability. The build compiles this file once
// per capability, defining CPU_CAPABILITY (DEFAULT, AVX2, AVX512, SVE256) and ATen's
// CPU_CAPABILITY_<name> for at::vec, with that capability's instruction-set flags; at::vec puts
// its code in the namespace at::vec::CPU_CAPABILITY and this file puts its own in
// charrnn::cpu::CPU_CAPABILITY, so the compilations share no inline function. Nothing here
// runs at load time: only the constant table at the end is defined at namespace scope.
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>

#include "step_kernels.h"

#ifndef CPU_CAPABILITY
#error "compile step_kernels.cpp with -DCPU_CAPABILITY=<DEFAULT|AVX2|AVX512|SVE256>"
#endif
#define CHARRNN_STRINGIFY_(x) #x
#define CHARRNN_STRINGIFY(x) CHARRNN_STRINGIFY_(x)

namespace charrnn::cpu::CPU_CAPABILITY {
namespace {

// The register tile: kRows rows by kPanels panels of accumulators, with a vector of each panel
// and a broadcast row element live beside them, sized to the capability's register file (32
// vector registers with AVX-512, 16 otherwise). At B = 1 the kPanels independent chains keep
// the FMA units busy.
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kRows = 6, kPanels = 4;
#else
constexpr int kRows = 4, kPanels = 3;
#endif

// tanh on the sweep's critical path. at::vec's (Sleef's, within 1 ulp) evaluates an exponential
// with its range reduction for every vector, which at small H costs as much as the step's
// product itself. In float32 it is a rational function instead, x P(x^2) / Q(x^2) of degrees 11
// and 6, fitted for the least largest relative error on [0, 8.5] (beyond, tanh is within an ulp
// of 1): a dozen FMAs and one division, no exponential, and at most 6 ulp (3.8e-7) from tanh
// over every float32, |tanh| <= 1 kept; NaN stays NaN (at::vec::clamp passes it through).
// float64, the reference dtype, keeps at::vec's. bench/bench_kernels.py times the fused op
// that runs it.
inline at::vec::Vectorized<double> tanh_of(const at::vec::Vectorized<double>& x) { return x.tanh(); }

inline at::vec::Vectorized<float> tanh_of(const at::vec::Vectorized<float>& x_in) {
  using Vec = at::vec::Vectorized<float>;
  const Vec x = at::vec::clamp(x_in, Vec(-8.5f), Vec(8.5f)), s = x * x;
  Vec p(2.0895669e-11f);
  for (const float c : {-1.3790677e-08f, 9.599359e-06f, 0.0029568414f, 0.12952721f, 1.0f})
    p = at::vec::fmadd(p, s, Vec(c));
  Vec q(0.00023310306f);
  for (const float c : {0.023910638f, 0.46286035f, 1.0f}) q = at::vec::fmadd(q, s, Vec(c));
  return at::vec::clamp(x * p / q, Vec(-1.0f), Vec(1.0f));
}

// out = tanh(out + acc) on a tile's columns.
template <typename scalar_t>
struct TanhStep {
  using Vec = at::vec::Vectorized<scalar_t>;
  scalar_t* out;
  int64_t ld;
  void operator()(int64_t r, int64_t col, int64_t len, const Vec& acc) const {
    scalar_t* o = out + r * ld + col;
    if (len == Vec::size()) tanh_of(Vec::loadu(o) + acc).store(o);
    else tanh_of(Vec::loadu(o, len) + acc).store(o, len);
  }
};

// a = (a + extra + acc) * (1 - h^2) on a tile's columns.
template <typename scalar_t>
struct TanhGradStep {
  using Vec = at::vec::Vectorized<scalar_t>;
  scalar_t* a;
  const scalar_t* extra;
  const scalar_t* h;
  int64_t ld;
  void operator()(int64_t r, int64_t col, int64_t len, const Vec& acc) const {
    const int64_t off = r * ld + col;
    Vec v = Vec::loadu(a + off, len) + acc;
    if (extra) v = v + Vec::loadu(extra + off, len);
    const Vec hv = Vec::loadu(h + off, len);
    (v * (Vec(scalar_t(1)) - hv * hv)).store(a + off, len);
  }
};

// out = bias + acc on a tile's columns; bias null: zero.
template <typename scalar_t>
struct BiasStep {
  using Vec = at::vec::Vectorized<scalar_t>;
  scalar_t* out;
  const scalar_t* bias;
  int64_t ld;
  void operator()(int64_t r, int64_t col, int64_t len, const Vec& acc) const {
    (bias ? Vec::loadu(bias + col, len) + acc : acc).store(out + r * ld + col, len);
  }
};

// One register tile: rows [r0, r0 + R) and panels [c0 / size, + NV) of prev packed, handed to
// the epilogue; prev null: a zero product.
template <typename scalar_t, int R, int NV, typename Epilogue>
void tile(const scalar_t* prev, const scalar_t* panels, int64_t K, int64_t N, int64_t ld,
          int64_t r0, int64_t c0, const Epilogue& epilogue) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t P = Vec::size();
  Vec acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = Vec(scalar_t(0));
  if (prev) {
    for (int64_t k = 0; k < K; ++k) {
      Vec w[NV];
      for (int v = 0; v < NV; ++v) w[v] = Vec::loadu(panels + v * K * P + k * P);
      for (int r = 0; r < R; ++r) {
        const Vec b(prev[(r0 + r) * ld + k]);
        for (int v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(b, w[v], acc[r][v]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) {
      const int64_t col = c0 + v * P;
      if (col < N) epilogue(r0 + r, col, std::min<int64_t>(P, N - col), acc[r][v]);
    }
}

// The tile for the rows and panels left at an edge: R rows and NV panels at most.
template <typename scalar_t, int R, int NV, typename Epilogue>
void edge_tile(int rows, int panels, const scalar_t* prev, const scalar_t* packed, int64_t K,
               int64_t N, int64_t ld, int64_t r0, int64_t c0, const Epilogue& epilogue) {
  if constexpr (R > 1)
    if (rows < R)
      return edge_tile<scalar_t, R - 1, NV>(rows, panels, prev, packed, K, N, ld, r0, c0, epilogue);
  if constexpr (NV > 1)
    if (panels < NV)
      return edge_tile<scalar_t, R, NV - 1>(rows, panels, prev, packed, K, N, ld, r0, c0, epilogue);
  tile<scalar_t, R, NV>(prev, packed, K, N, ld, r0, c0, epilogue);
}

template <typename scalar_t, typename Epilogue>
void step(const scalar_t* prev, const scalar_t* packed, int64_t rows, int64_t K, int64_t N,
          int64_t ld, int64_t p0, int64_t p1, const Epilogue& epilogue) {
  constexpr int64_t P = at::vec::Vectorized<scalar_t>::size();
  for (int64_t p = p0; p < p1; p += kPanels) {
    const int panels = static_cast<int>(std::min<int64_t>(kPanels, p1 - p));
    for (int64_t r = 0; r < rows; r += kRows) {
      const int tile_rows = static_cast<int>(std::min<int64_t>(kRows, rows - r));
      edge_tile<scalar_t, kRows, kPanels>(tile_rows, panels, prev, packed + p * K * P, K, N, ld,
                                          r, p * P, epilogue);
    }
  }
}

template <typename scalar_t>
void forward(scalar_t* out, const scalar_t* prev, const scalar_t* packed, int64_t rows,
             int64_t K, int64_t N, int64_t ld, int64_t p0, int64_t p1) {
  step(prev, packed, rows, K, N, ld, p0, p1, TanhStep<scalar_t>{out, ld});
}

template <typename scalar_t>
void backward(scalar_t* a, const scalar_t* extra, const scalar_t* h, const scalar_t* next,
              const scalar_t* packed, int64_t rows, int64_t K, int64_t N, int64_t ld, int64_t p0,
              int64_t p1) {
  step(next, packed, rows, K, N, ld, p0, p1, TanhGradStep<scalar_t>{a, extra, h, ld});
}

template <typename scalar_t>
void project(scalar_t* out, const scalar_t* x, const scalar_t* bias, const scalar_t* packed,
             int64_t rows, int64_t K, int64_t N, int64_t ld, int64_t p0, int64_t p1) {
  step(x, packed, rows, K, N, K, p0, p1, BiasStep<scalar_t>{out, bias, ld});
}

template <typename scalar_t>
void pack(const scalar_t* w, int64_t k_stride, int64_t j_stride, int64_t K, int64_t N,
          scalar_t* packed) {
  constexpr int64_t P = at::vec::Vectorized<scalar_t>::size();
  for (int64_t p = 0; p * P < N; ++p) {
    scalar_t* panel = packed + p * K * P;
    const int64_t n = std::min<int64_t>(P, N - p * P);
    const scalar_t* src = w + p * P * j_stride;
    // Reading along the unit stride keeps the copy of a transposed matrix at memory speed.
    if (j_stride == 1) {
      for (int64_t k = 0; k < K; ++k)
        for (int64_t c = 0; c < P; ++c) panel[k * P + c] = c < n ? src[k * k_stride + c] : scalar_t(0);
    } else {
      for (int64_t c = 0; c < P; ++c)
        for (int64_t k = 0; k < K; ++k) panel[k * P + c] = c < n ? src[k * k_stride + c * j_stride] : scalar_t(0);
    }
  }
}

template <typename scalar_t>
constexpr StepKernels<scalar_t> kernels_of() {
  return {at::vec::Vectorized<scalar_t>::size(), &pack<scalar_t>, &project<scalar_t>,
          &forward<scalar_t>, &backward<scalar_t>};
}

}  // namespace

extern const CpuKernels kKernels = {CHARRNN_STRINGIFY(CPU_CAPABILITY), kernels_of<float>(),
                                    kernels_of<double>()};

}  // namespace charrnn::cpu::CPU_CAPABILITY
