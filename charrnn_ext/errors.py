"""The project's one error type for what a user can fix.

A bad setting, a missing or foreign file, a checkpoint that cannot resume, a run that cannot go
on: each raises CharRNNError with a message written for the user, and `charrnn` prints that
message as one line and exits 2. Any other exception is a bug and keeps its traceback.
"""


class CharRNNError(ValueError):
    """Something the user can fix; the message says what and how."""


class MissingFileError(CharRNNError, FileNotFoundError):
    """A file the user named (data, checkpoint) is not there."""


class PeerLostError(RuntimeError):
    """Not the user's doing: a collective failed because another process of a torchrun launch
    is gone (it failed first and says why). `charrnn` prints it as one line and exits 1."""


# The names the modules raise under, kept for code that catches them: one type all the same.
TrainingError = CorpusError = CharRNNError


# FusedRNN's argument errors (charrnn_ext.nn). FusedRNN is a drop-in for torch.nn.RNN, so each
# mistake raises an instance of the type nn.RNN raises for it, and also of the type FusedRNN
# raised before it checked arguments the way nn.RNN does (ValueError for shapes and devices,
# TypeError for dtypes): `except` clauses written for either keep working.

class RNNInputError(RuntimeError, ValueError):
    """A FusedRNN call that torch.nn.RNN refuses as well: the message names the argument, its
    shape (or dtype, or device) and what was expected."""


class RNNShapeError(RNNInputError):
    """input or hx of the wrong rank or shape, or an input of sequence length 0.
    nn.RNN raises ValueError for the input's rank and RuntimeError for the rest: this is both."""


class RNNDtypeError(RNNInputError, TypeError):
    """input's dtype differs from the weights' (nn.RNN: ValueError) or hx's from input's
    (nn.RNN: RuntimeError); a TypeError as well, as the fused op's own dtype checks raise."""


class RNNDeviceError(RNNInputError):
    """input not on the weights' device, or hx not on input's (nn.RNN: RuntimeError)."""


class FusedRNNFallbackWarning(UserWarning):
    """FusedRNN ran torch.nn.RNN's own (unfused) implementation for a call the fused kernels do
    not cover; issued once per process per reason."""
