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
