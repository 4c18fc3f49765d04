// The launch plans of the persistent sweeps (kernels in sweep_kernels.cuh), their launch, and
// the pointwise kernel of the per-step fallback. Only the CUDA runtime and c10's error macros
// are included.
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>

#include "sweep_kernels.cuh"

namespace charrnn::cuda {
namespace {

constexpr int kMinSliceK = 32;   // each k-split group takes at least this many k
constexpr int kMaxCluster = 16;  // sm_90's non-portable cluster size limit

template <typename scalar_t>
__global__ void tanh_grad_kernel(scalar_t* a, const scalar_t* h, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    a[i] *= scalar_t(1) - h[i] * h[i];
}

template <typename scalar_t>
__global__ void dropout_kernel(scalar_t* y, const scalar_t* x, int64_t n, const DropoutMask mask) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = dropout_apply(mask, static_cast<uint64_t>(i), x[i]);
}

// Blocks of 256 threads for n elements, at most a grid's worth (the kernels stride over the rest).
int elementwise_blocks(int64_t n) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + 255) / 256, 65535)));
}

Scope scope_of(SweepPath path) {
  return path == SweepPath::kBlock ? Scope::kBlock
         : path == SweepPath::kCluster ? Scope::kCluster : Scope::kGrid;
}

struct Device {
  int sms = 0, smem_optin = 0, major = 0, cooperative = 0, clusters = 0;
  explicit Device(int dev) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, dev));
    if (major >= 9) C10_CUDA_CHECK(cudaDeviceGetAttribute(&clusters, cudaDevAttrClusterLaunch, dev));
  }
};

// A persistent sweep whose tiles do not all fit on the GPU at once runs them in waves, each
// a whole sweep; past this many the per-step path is the better choice.
constexpr int64_t kMaxWaves = 2;

// Fills groups, threads and smem_bytes from the other fields; false if the block is too big.
bool finish_plan(SweepPlan& p, int H, size_t elem, const Device& dev) {
  if (p.units > kMaxThreads || static_cast<int64_t>(p.slices) * p.tiles > 65535) return false;
  p.groups = std::max(1, std::min(kMaxThreads / p.units, round_up(H, 4) / kMinSliceK));
  p.threads = p.units * p.groups;
  // In 64 bits first: Layout's ints would overflow for a huge tile.
  const int64_t hpad = round_up(H, 4), rows = p.rows, units = p.units;
  const int64_t groups = p.groups, elems = state_buffers(scope_of(p.path)) * rows * (hpad + 4) +
                                           (hpad + groups) * units + groups * rows * units;
  if (elems * static_cast<int64_t>(elem) > dev.smem_optin) return false;
  const Layout lay(H, p.units, p.rows, p.groups, state_buffers(scope_of(p.path)));
  TORCH_INTERNAL_ASSERT(lay.total() == elems, "charrnn: Layout and finish_plan disagree");
  p.smem_bytes = static_cast<size_t>(elems) * elem;
  return true;
}

// Batch tiles: as many as there are multiprocessors for `blocks_per_tile` blocks each, then
// fewer rows per tile (more tiles) until shared memory fits.
bool plan_tiles(SweepPlan& p, int B, int H, size_t elem, const Device& dev, int blocks_per_tile) {
  const int tiles = std::max(1, std::min(B, dev.sms / blocks_per_tile));
  for (p.rows = ceil_div(B, tiles);; p.rows = ceil_div(p.rows, 2)) {
    p.tiles = ceil_div(B, p.rows);
    if (finish_plan(p, H, elem, dev)) return true;
    if (p.rows == 1) return false;
  }
}

template <typename scalar_t>
Kernel<scalar_t> kernel_for(const SweepPlan& p, bool backward) {
  return pick_kernel<scalar_t>(backward, scope_of(p.path), p.rows);
}

// The dynamic shared-memory limit is a property of the kernel, not of a launch: set to the
// device's maximum for every kernel, so that concurrent callers never lower it under another.
void allow_smem(const void* kernel, const Device& dev) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      dev.smem_optin));
}

cudaLaunchAttribute cluster_attribute(int size) {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = size;
  attr.val.clusterDim.y = 1;
  attr.val.clusterDim.z = 1;
  return attr;
}

// Co-resident units of the plan (blocks, or clusters for the cluster path); 0 if none fits.
template <typename scalar_t>
int64_t resident(const SweepPlan& p, const Device& dev) {
  int64_t fewest = INT64_MAX;
  for (bool backward : {false, true}) {
    const void* kernel = reinterpret_cast<const void*>(kernel_for<scalar_t>(p, backward));
    allow_smem(kernel, dev);
    if (p.path == SweepPath::kCluster) {
      cudaFuncAttributes attrs;
      C10_CUDA_CHECK(cudaFuncGetAttributes(&attrs, kernel));
      // Compiled for an older GPU (machine code, or PTX the driver compiles at load time, which
      // reports binaryVersion 90 but ptxVersion 80): its cluster code is a trap.
      if (attrs.binaryVersion < 90 || attrs.ptxVersion < 90) return 0;
      if (p.slices > 8)
        C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
      cudaLaunchConfig_t config = {};
      config.gridDim = dim3(p.slices, p.tiles);
      config.blockDim = dim3(p.threads);
      config.dynamicSmemBytes = p.smem_bytes;
      cudaLaunchAttribute attr = cluster_attribute(p.slices);
      config.attrs = &attr;
      config.numAttrs = 1;
      int clusters = 0;
      if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) != cudaSuccess) {
        (void)cudaGetLastError();  // an unsupported cluster shape is an answer, not an error
        return 0;
      }
      fewest = std::min<int64_t>(fewest, clusters);
    } else {
      int per_sm = 0;
      C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, p.threads, p.smem_bytes));
      fewest = std::min<int64_t>(fewest, static_cast<int64_t>(per_sm) * dev.sms);
    }
  }
  return fewest;
}

template <typename scalar_t>
bool plan_path(SweepPlan& p, int B, int H, const Device& dev, const char** why_not) {
  const size_t elem = sizeof(scalar_t);
  switch (p.path) {
    case SweepPath::kBlock: {
      p.units = H;
      p.slices = 1;
      if (!plan_tiles(p, B, H, elem, dev, 1)) {
        *why_not = "w_hh does not fit one block's shared memory";
        return false;
      }
      const int64_t at_once = resident<scalar_t>(p, dev);
      if (at_once > 0 && p.tiles <= kMaxWaves * at_once) return true;
      *why_not = "the batch needs too many waves of blocks";
      return false;
    }
    case SweepPath::kCluster:
      if (!dev.clusters) {
        *why_not = "thread-block clusters need sm_90 or newer";
        return false;
      }
      for (int size = 2; size <= kMaxCluster; size *= 2) {
        p.units = ceil_div(H, size);
        p.slices = ceil_div(H, p.units);
        if (!plan_tiles(p, B, H, elem, dev, p.slices)) continue;
        const int64_t at_once = resident<scalar_t>(p, dev);
        if (at_once > 0 && p.tiles <= kMaxWaves * at_once) return true;
      }
      *why_not = "w_hh does not fit the shared memory of a 16-block cluster, or the batch needs "
                 "too many waves of clusters, or the kernels were not built for sm_90";
      return false;
    case SweepPath::kGrid:
      if (!dev.cooperative) {
        *why_not = "the device does not support cooperative launch";
        return false;
      }
      // Most tiles first. Every step each block reloads its tile's whole state from L2, so a
      // step moves B * H * (blocks per tile) elements: splitting the batch into more tiles of
      // fewer blocks cuts that traffic (and the blocks each barrier waits for), while the
      // work per block stays B * H * H / (all blocks). What bounds it is shared memory: each
      // tile holds a whole copy of w_hh across its blocks.
      for (int tiles = std::min(B, dev.sms); tiles >= 1; --tiles) {
        p.rows = ceil_div(B, tiles);
        p.tiles = ceil_div(B, p.rows);
        // One block per multiprocessor, but at least a warp of threads per block (a small H
        // has few k-split groups): blocks of a few threads would waste most of each warp.
        p.units = std::min(H, std::max(ceil_div(H, dev.sms / p.tiles),
                                       ceil_div(32, std::max(1, round_up(H, 4) / kMinSliceK))));
        p.slices = ceil_div(H, p.units);
        if (finish_plan(p, H, elem, dev) &&
            static_cast<int64_t>(p.slices) * p.tiles <= resident<scalar_t>(p, dev))
          return true;
      }
      *why_not = "w_hh and the state do not fit the shared memory of co-resident blocks";
      return false;
    default:
      return false;
  }
}

}  // namespace

SweepPath sweep_path_from_env() {
  const char* value = std::getenv("CHARRNN_CUDA_SWEEP");
  return value == nullptr || *value == '\0' ? SweepPath::kAuto : sweep_path_from_name(value);
}

SweepPath sweep_path_from_name(const char* value) {
  for (SweepPath path : {SweepPath::kAuto, SweepPath::kBlock, SweepPath::kCluster,
                         SweepPath::kGrid, SweepPath::kSteps})
    if (std::strcmp(value, sweep_path_name(path)) == 0) return path;
  TORCH_CHECK_VALUE(false, "charrnn: CHARRNN_CUDA_SWEEP must be one of auto, block, cluster, grid, "
                    "steps; got '", value, "'");
}

const char* sweep_path_name(SweepPath path) {
  switch (path) {
    case SweepPath::kAuto: return "auto";
    case SweepPath::kBlock: return "block";
    case SweepPath::kCluster: return "cluster";
    case SweepPath::kGrid: return "grid";
    default: return "steps";
  }
}

template <typename scalar_t>
SweepPlan plan_sweep_typed(SweepPath requested, int B, int H, const char** why_not) {
  int dev_index = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev_index));
  // Planning queries the driver a dozen times; a training run asks the same question every
  // call, so answers are kept per (device, path, B, H, dtype).
  struct Answer {
    SweepPlan plan;
    const char* why_not;
  };
  static std::mutex mutex;
  static std::map<std::tuple<int, int, int, int>, Answer> answers;
  const auto key = std::make_tuple(dev_index, static_cast<int>(requested), B, H);
  {
    const std::lock_guard<std::mutex> lock(mutex);
    if (auto it = answers.find(key); it != answers.end()) {
      if (why_not) *why_not = it->second.why_not;
      return it->second.plan;
    }
  }
  const Device dev(dev_index);
  Answer answer{SweepPlan{}, "unknown reason"};
  if (requested == SweepPath::kAuto) {
    // The path that spreads a step over the most multiprocessors first: the grid path, then
    // clusters, then a block. `bench/bench_kernels.py --device cuda` times every path that fits
    // (its fused:<path> columns), which is what this order rests on.
    for (SweepPath path : {SweepPath::kGrid, SweepPath::kCluster, SweepPath::kBlock}) {
      SweepPlan plan;
      plan.path = path;
      const char* reason = "";
      if (plan_path<scalar_t>(plan, B, H, dev, &reason)) {
        answer.plan = plan;
        break;
      }
    }
  } else if (requested != SweepPath::kSteps) {
    SweepPlan plan;
    plan.path = requested;
    if (plan_path<scalar_t>(plan, B, H, dev, &answer.why_not)) answer.plan = plan;
  }
  const std::lock_guard<std::mutex> lock(mutex);
  answers.emplace(key, answer);
  if (why_not) *why_not = answer.why_not;
  return answer.plan;
}

SweepPlan plan_sweep(SweepPath requested, int64_t B, int64_t H, size_t elem_size,
                     const char** why_not) {
  // Larger sizes than an int holds never fit on chip; the per-step path takes them.
  if (B < 1 || H < 1 || B > (1 << 30) || H > (1 << 30)) {
    if (why_not) *why_not = "B and H must be between 1 and 2^30 for a persistent sweep";
    return SweepPlan{};
  }
  return elem_size == sizeof(double)
             ? plan_sweep_typed<double>(requested, static_cast<int>(B), static_cast<int>(H), why_not)
             : plan_sweep_typed<float>(requested, static_cast<int>(B), static_cast<int>(H), why_not);
}

template <typename scalar_t>
void launch_sweep(const SweepPlan& p, bool backward, const SweepArgs<scalar_t>& args,
                  cudaStream_t stream) {
  TORCH_INTERNAL_ASSERT(p.path != SweepPath::kSteps && p.path != SweepPath::kAuto);
  // plan_sweep made this plan, and on the way raised the kernel's shared-memory limit (and
  // allowed its cluster size) on this device.
  const Kernel<scalar_t> kernel = kernel_for<scalar_t>(p, backward);
  const dim3 grid(p.slices, p.tiles), block(p.threads);
  int units = p.units, rows = p.rows, groups = p.groups;
  switch (p.path) {
    case SweepPath::kBlock:
      kernel<<<grid, block, p.smem_bytes, stream>>>(args, units, rows, groups);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    case SweepPath::kCluster: {
      cudaLaunchConfig_t config = {};
      config.gridDim = grid;
      config.blockDim = block;
      config.dynamicSmemBytes = p.smem_bytes;
      config.stream = stream;
      cudaLaunchAttribute attr = cluster_attribute(p.slices);
      config.attrs = &attr;
      config.numAttrs = 1;
      C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, args, units, rows, groups));
      return;
    }
    default: {
      void* params[] = {const_cast<SweepArgs<scalar_t>*>(&args), &units, &rows, &groups};
      C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), grid, block,
                                                 params, p.smem_bytes, stream));
      return;
    }
  }
}

template <typename scalar_t>
void launch_tanh_grad(scalar_t* a, const scalar_t* h, int64_t n, cudaStream_t stream) {
  tanh_grad_kernel<<<elementwise_blocks(n), 256, 0, stream>>>(a, h, n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void launch_dropout(scalar_t* y, const scalar_t* x, int64_t n, const DropoutMask& mask,
                    cudaStream_t stream) {
  dropout_kernel<<<elementwise_blocks(n), 256, 0, stream>>>(y, x, n, mask);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template void launch_sweep<float>(const SweepPlan&, bool, const SweepArgs<float>&, cudaStream_t);
template void launch_sweep<double>(const SweepPlan&, bool, const SweepArgs<double>&, cudaStream_t);
template void launch_tanh_grad<float>(float*, const float*, int64_t, cudaStream_t);
template void launch_tanh_grad<double>(double*, const double*, int64_t, cudaStream_t);
template void launch_dropout<float>(float*, const float*, int64_t, const DropoutMask&, cudaStream_t);
template void launch_dropout<double>(double*, const double*, int64_t, const DropoutMask&, cudaStream_t);

}  // namespace charrnn::cuda
