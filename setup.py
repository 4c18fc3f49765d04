"""Builds charrnn_ext._C against the installed torch: `pip install --no-build-isolation .`

Environment switches:
  CHARRNN_CUDA=1 / 0      force / skip the CUDA kernels (default: build them when torch is a
                          CUDA build and a toolkit is found)
  CUDA_HOME               the toolkit to use (wins over every guess)
  TORCH_CUDA_ARCH_LIST    architectures for the CUDA kernels (default: torch's own list)
  MAX_JOBS                parallel compile jobs (ninja)
"""
import os
import platform
from pathlib import Path

from setuptools import setup

import torch
from torch.utils import cpp_extension

ROOT = Path(__file__).parent

# The torch this build compiles against, for charrnn_ext/__init__.py to compare with the torch
# that imports it before it loads _C: a _C built for another torch fails to load with an
# undefined symbol, which says nothing of the cause. Generated on every build; not in git.
(ROOT / "charrnn_ext" / "_build_config.py").write_text(
    '"""Written by setup.py: the torch this build of charrnn_ext was compiled against."""\n'
    f"TORCH_VERSION = {str(torch.__version__)!r}\n")

# One list feeds this build and CMakeLists.txt. Its *_kernels.cpp files hold the CPU kernels'
# vectorised code and are compiled once per CPU capability (see BuildExtension below).
ALL_SOURCES = [s for s in (ROOT / "csrc" / "sources.txt").read_text().split() if s]
CAPABILITY_SOURCES = [s for s in ALL_SOURCES if s.endswith("_kernels.cpp")]
SOURCES = [s for s in ALL_SOURCES if s not in CAPABILITY_SOURCES]
# The CUDA kernels (.cu, through nvcc) and their ATen host code (.cpp, through the C++ compiler).
CUDA_SOURCES = sorted(str(p.relative_to(ROOT)) for pattern in ("*.cu", "*.cpp")
                      for p in (ROOT / "csrc" / "cuda").glob(pattern))


def is_toolkit(path):
    return bool(path) and (Path(path) / "include" / "cuda_runtime.h").is_file() and any(
        (Path(path) / lib).is_dir() for lib in ("lib64", "lib"))


def find_cuda_home():
    """An explicit CUDA_HOME wins; then torch's guess if it is a real toolkit (the guess comes
    from the nvcc on PATH, which may be a wrapper script elsewhere); then the standard place."""
    explicit = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if explicit:
        if not is_toolkit(explicit):
            raise RuntimeError(f"CUDA_HOME={explicit} is not a CUDA toolkit "
                               "(needs include/cuda_runtime.h and lib64/ or lib/)")
        return explicit
    for guess in (cpp_extension.CUDA_HOME, "/usr/local/cuda"):
        if is_toolkit(guess):
            return guess
    return None


def want_cuda():
    switch = os.environ.get("CHARRNN_CUDA", "auto").lower()
    if switch in ("0", "false", "no", "off"):
        return None
    home = find_cuda_home() if torch.version.cuda else None
    if switch in ("1", "true", "yes", "on") and home is None:
        raise RuntimeError("CHARRNN_CUDA=1 but " + (
            "this torch is a CPU-only build" if not torch.version.cuda else
            "no CUDA toolkit was found: set CUDA_HOME"))
    return home


def cpu_capabilities():
    """ATen's CPU capabilities for this architecture, with the flags for each. CPU_CAPABILITY
    and CPU_CAPABILITY_<name> pick at::vec's implementation; the instruction-set flags are the
    ones csrc/cpu/dispatch.cpp checks the CPU for. The same list is in CMakeLists.txt."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        caps = {"DEFAULT": [], "AVX2": ["-mavx2", "-mfma"],
                "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"]}
    elif machine in ("aarch64", "arm64") and platform.system() == "Linux":
        # NEON is part of the aarch64 baseline, so DEFAULT uses it already.
        caps = {"DEFAULT": [], "SVE256": ["-march=armv8.2-a+sve", "-msve-vector-bits=256",
                                          "-DCPU_CAPABILITY_SVE"]}
    else:
        caps = {"DEFAULT": []}
    return {name: [f"-DCPU_CAPABILITY={name}", f"-DCPU_CAPABILITY_{name}"] + flags
            for name, flags in caps.items()}


class BuildExtension(cpp_extension.BuildExtension):
    """torch's BuildExtension, plus CAPABILITY_SOURCES compiled once per CPU capability (each
    into its own folder, with the extension's flags and the capability's) and linked into the
    same extension. Their objects come after the others on the link line, in the order of
    cpu_capabilities(), so an inline function that several files emit resolves to a copy
    built without wider instructions."""

    def build_extension(self, ext):
        ext.extra_objects = [
            obj for name, flags in cpu_capabilities().items()
            for obj in self.compiler.compile(
                CAPABILITY_SOURCES, output_dir=os.path.join(self.build_temp, "cpu-" + name),
                include_dirs=ext.include_dirs, depends=ext.depends,
                extra_postargs={"cxx": ext.extra_compile_args["cxx"] + flags, "nvcc": []})]
        super().build_extension(ext)


# -fopenmp: at::parallel_for is a header template whose OpenMP pragmas are compiled into this
# extension; without the flag every parallel_for here silently runs on one thread. No
# instruction-set flags: only CAPABILITY_SOURCES get those.
# C++20 named, not left to torch: the CPU kernels wait on std::atomic (C++20), and torch
# before 2.13 would add -std=c++17. nvcc gets the standard torch picks.
cxx_flags = ["-O3", "-fopenmp", "-std=c++20"]

cuda_home = want_cuda()
if cuda_home and CUDA_SOURCES:
    cpp_extension.CUDA_HOME = cuda_home
    os.environ["CUDA_HOME"] = cuda_home
    # torch.cuda.get_arch_list() is empty without a visible GPU (a build machine).
    own = [a[3:-1] + "." + a[-1] for a in torch.cuda.get_arch_list() if a.startswith("sm_")]
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST") or ";".join(own) or "8.0;9.0"
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    defines = ["-DCHARRNN_WITH_CUDA", f'-DCHARRNN_CUDA_ARCH_LIST="{arch_list}"']
    ext = cpp_extension.CUDAExtension(
        "charrnn_ext._C", SOURCES + CUDA_SOURCES,
        extra_compile_args={"cxx": cxx_flags + defines, "nvcc": ["-O3"] + defines},
        extra_link_args=["-fopenmp"])
else:
    ext = cpp_extension.CppExtension("charrnn_ext._C", SOURCES, extra_compile_args={"cxx": cxx_flags},
                                     extra_link_args=["-fopenmp"])

setup(
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
