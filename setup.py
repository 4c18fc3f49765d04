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
# One list feeds this build and CMakeLists.txt.
SOURCES = [s for s in (ROOT / "csrc" / "sources.txt").read_text().split() if s]
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


# -fopenmp: at::parallel_for is a header template whose OpenMP pragmas are compiled into this
# extension; without the flag every parallel_for here silently runs on one thread.
cxx_flags = ["-O3", "-fopenmp"]  # the C++ standard: torch adds the one its headers need
if platform.machine() in ("x86_64", "AMD64"):
    # at::vec then uses AVX2 and torch's exported Sleef for tanh, 8 floats at a time.
    cxx_flags += ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]

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

# The torch this build compiles against, for charrnn_ext/__init__.py to compare with the torch
# that imports it before it loads _C: a _C built for another torch fails to load with an
# undefined symbol, which says nothing of the cause. Generated on every build; not in git.
(ROOT / "charrnn_ext" / "_build_config.py").write_text(
    '"""Written by setup.py: the torch this build of charrnn_ext was compiled against."""\n'
    f"TORCH_VERSION = {str(torch.__version__)!r}\n")

setup(
    ext_modules=[ext],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
