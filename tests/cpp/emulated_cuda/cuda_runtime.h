// A host-thread emulation of the CUDA primitives that csrc/cuda/sweep_kernels.cuh uses, so
// that g++ can compile and run its kernels where no GPU is available. Each CUDA thread is a
// std::thread, __syncthreads and cluster.sync are std::barriers, a block's shared memory is a
// host buffer. It checks indexing and the placement of barriers, not speed, and its memory
// model (C++'s, on x86) is stronger than the GPU's: ordering bugs can still hide here.
#pragma once

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <thread>
#include <vector>

#define CHARRNN_EMULATED_CUDA 1
#define __global__
#define __device__
#define __host__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

using cudaStream_t = void*;
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) double2 {
  double x, y;
};
using std::fma;
using std::max;
using std::min;
using std::tanh;

namespace emu {
// Where the running host thread stands in the emulated launch.
inline thread_local dim3 thread_idx, block_idx, block_dim, grid_dim;
inline thread_local unsigned char* shared_memory = nullptr;     // this block's buffer
inline thread_local std::barrier<>* block_barrier = nullptr;
inline thread_local std::barrier<>* cluster_barrier = nullptr;
inline thread_local std::vector<unsigned char*>* cluster_shared = nullptr;  // by block rank
inline thread_local unsigned cluster_rank = 0;
}  // namespace emu

#define threadIdx (emu::thread_idx)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }
inline void __nanosleep(unsigned) { std::this_thread::yield(); }
[[noreturn]] inline void __trap() { std::abort(); }
template <typename T>
T __ldcg(const T* p) {
  return *p;  // tile_barrier's acquire already orders it after the other blocks' writes
}

namespace charrnn::cuda {
inline unsigned char* block_shared_memory() { return emu::shared_memory; }
}  // namespace charrnn::cuda
