// Picks the variant of the step kernels for this CPU (see step_kernels.h). ATen's choice,
// at::get_cpu_capability(), follows ATEN_CPU_CAPABILITY and the CPU's features; it is an upper
// bound here, and on x86 the CPU's own features are checked too, so that forcing a capability
// the CPU lacks falls back to one it has instead of stopping on an illegal instruction.
#include <ATen/Version.h>

#include <cctype>
#include <string>
#include <vector>

#include "../rnn_tanh.h"
#include "step_kernels.h"

namespace charrnn::cpu {
namespace {

// Best first; ATen names its capabilities as these tables do.
const std::vector<const CpuKernels*>& compiled() {
  static const std::vector<const CpuKernels*> tables = {
#if CHARRNN_CPU_X86
      &AVX512::kKernels, &AVX2::kKernels,
#elif CHARRNN_CPU_SVE
      &SVE256::kKernels,
#endif
      &DEFAULT::kKernels};
  return tables;
}

bool cpu_runs(const CpuKernels& k) {
#if CHARRNN_CPU_X86
  // The instruction sets the build gives each variant (setup.py, CMakeLists.txt); ATen asks
  // for the same ones before it picks AVX2 or AVX512.
  const std::string name = k.capability;
  if (name == "AVX2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (name == "AVX512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("fma");
#endif
  return true;  // DEFAULT; SVE256 only where ATen, which checks the vector length, chose it
}

const CpuKernels& choose() {
  const std::string aten = at::get_cpu_capability();
  bool allowed = false;  // true from ATen's choice downwards
  for (const CpuKernels* k : compiled()) {
    allowed = allowed || aten == k->capability;
    if (allowed && cpu_runs(*k)) return *k;
  }
  return DEFAULT::kKernels;
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

}  // namespace

const CpuKernels& kernels() {
  static const CpuKernels& chosen = choose();
  return chosen;
}

template <>
const StepKernels<float>& step_kernels<float>() {
  return kernels().f32;
}
template <>
const StepKernels<double>& step_kernels<double>() {
  return kernels().f64;
}

}  // namespace charrnn::cpu

namespace charrnn {

std::string cpu_capability() { return cpu::lower(cpu::kernels().capability); }

std::vector<std::string> cpu_capabilities_compiled() {
  std::vector<std::string> names;
  for (const cpu::CpuKernels* k : cpu::compiled()) names.push_back(cpu::lower(k->capability));
  return names;
}

}  // namespace charrnn
