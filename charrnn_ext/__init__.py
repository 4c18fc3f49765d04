"""charrnn_ext: a fused tanh-RNN op for PyTorch (CPU and CUDA) and a char-rnn toolkit."""
import torch  # loads libtorch and libc10, which _C links against


def _check_torch_version():
    """_C works only with the torch it was compiled against; any other fails to load it with
    an undefined symbol (or worse), so compare the versions before loading it."""
    try:
        from ._build_config import TORCH_VERSION as built_for
    except ImportError:  # not built by setup.py: nothing recorded to compare
        return
    if built_for != str(torch.__version__):  # plain strings: the exact build, local tag included
        raise ImportError(
            f"charrnn_ext was built against torch {built_for}, but torch {torch.__version__} is "
            f"installed ({torch.__file__}). Rebuild it against the installed torch: "
            "`pip install --no-build-isolation --force-reinstall --no-deps .` from the source "
            f"checkout or sdist (`-e .` for a development checkout), or install torch=={built_for}.")


_check_torch_version()

try:
    from . import _C  # registers torch.ops.charrnn.*
except ImportError as e:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "charrnn_ext's compiled extension (charrnn_ext._C) could not be imported: "
        f"{e}. Build it against the installed torch with "
        "`pip install --no-build-isolation .` (or `-e .`) from the source checkout."
    ) from e

from .errors import (CharRNNError, FusedRNNFallbackWarning, RNNDeviceError, RNNDtypeError, RNNInputError,
                     RNNShapeError)
from .ops import RNNTanhFunction, rnn_tanh
from .nn import FusedRNN  # also adds FusedRNN to torch.serialization's safe globals


def build_info():
    """{'torch_version', 'cuda', 'cuda_arch_list'} of the compiled extension."""
    return dict(_C.build_info())


__all__ = ["rnn_tanh", "RNNTanhFunction", "FusedRNN", "CharRNNError", "RNNInputError", "RNNShapeError",
           "RNNDtypeError", "RNNDeviceError", "FusedRNNFallbackWarning", "build_info"]
__version__ = "0.1.0"
