"""charrnn_ext: a fused tanh-RNN op for PyTorch (CPU and CUDA) and a char-rnn toolkit."""
import torch  # loads libtorch and libc10, which _C links against

try:
    from . import _C  # registers torch.ops.charrnn.*
except ImportError as e:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "charrnn_ext's compiled extension (charrnn_ext._C) could not be imported: "
        f"{e}. Build it against the installed torch with "
        "`pip install --no-build-isolation .` (or `-e .`) from the source checkout."
    ) from e

from .ops import RNNTanhFunction, rnn_tanh
from .nn import FusedRNN


def build_info():
    """{'torch_version', 'cuda', 'cuda_arch_list'} of the compiled extension."""
    return dict(_C.build_info())


__all__ = ["rnn_tanh", "RNNTanhFunction", "FusedRNN", "build_info"]
__version__ = "0.1.0"
