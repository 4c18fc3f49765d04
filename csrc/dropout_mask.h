// The dropout mask of the fused op, drawn from a counter-based generator so that the forward
// draws it where it writes the output and the backward draws the same mask again instead of
// storing it. CPU and CUDA kernels include this one header, so their masks are identical.
//
// Element e of a layer's [T, B, H] output (e its row-major index) has the 32-bit draw
// dropout_draw(seed, e): the high half of SplitMix64's output function applied to
// seed + (e + 1) * golden gamma, i.e. the e-th output of SplitMix64 started at `seed`. It is
// kept iff draw >= round(p * 2^32) and then scaled by 1 / (1 - p), as torch's dropout scales;
// p = 0 keeps everything, p = 1 drops everything (scale 0, as torch returns zeros). This is not
// torch's random stream: the seed is one draw from torch's generator per op call.
//
// No torch header here: tests/cpp/test_sweep_emulated.cpp compiles this with plain g++.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define CHARRNN_HOST_DEVICE __host__ __device__
#else
#define CHARRNN_HOST_DEVICE
#endif

namespace charrnn {

struct DropoutMask {
  uint64_t seed = 0;
  uint64_t threshold = 0;  // drop iff draw < threshold; 2^32 drops every element
  double scale = 1.0;      // of a kept element: 1 / (1 - p); 0 when p = 1
};

// p in [0, 1].
inline DropoutMask make_dropout_mask(double p, int64_t seed) {
  DropoutMask m;
  m.seed = static_cast<uint64_t>(seed);
  m.threshold = static_cast<uint64_t>(std::llround(p * 4294967296.0));
  m.scale = p < 1.0 ? 1.0 / (1.0 - p) : 0.0;
  return m;
}

CHARRNN_HOST_DEVICE inline uint32_t dropout_draw(uint64_t seed, uint64_t element) {
  uint64_t z = seed + (element + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return static_cast<uint32_t>((z ^ (z >> 31)) >> 32);
}

// The value of element `element` after dropout: v times the scale, or times zero (so that a
// NaN stays NaN, as with torch's dropout). The multiplier is selected, not branched on, so
// that the CPU loops vectorise.
template <typename scalar_t>
CHARRNN_HOST_DEVICE inline scalar_t dropout_apply(const DropoutMask& m, uint64_t element, scalar_t v) {
  const scalar_t scale = static_cast<scalar_t>(m.scale);
  return v * (dropout_draw(m.seed, element) >= m.threshold ? scale : scalar_t(0));
}

}  // namespace charrnn
