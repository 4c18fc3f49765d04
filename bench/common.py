"""What every benchmark records beside its figures."""
import subprocess
from pathlib import Path


def git_commit() -> str | None:
    """The short hash of the checked-out commit, or None outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
