// Thread-block clusters for the emulation in cuda_runtime.h beside this file.
#pragma once

#include "cuda_runtime.h"

namespace cooperative_groups {
struct cluster_group {
  void sync() const { emu::cluster_barrier->arrive_and_wait(); }
  unsigned num_blocks() const { return static_cast<unsigned>(emu::cluster_shared->size()); }
  unsigned block_rank() const { return emu::cluster_rank; }
  // The same offset in another block's shared memory (distributed shared memory).
  template <typename T>
  T* map_shared_rank(T* p, unsigned rank) const {
    const auto offset = reinterpret_cast<unsigned char*>(p) - emu::shared_memory;
    return reinterpret_cast<T*>((*emu::cluster_shared)[rank] + offset);
  }
};
inline cluster_group this_cluster() { return {}; }
}  // namespace cooperative_groups
