"""What every part of the grading package shares: its error and the reading of notebooks."""
from __future__ import annotations

from pathlib import Path


class GradingError(Exception):
    """Bad input to the course tools; the message is meant for the user, without a traceback."""


def read_notebook(path: Path):
    """Read and validate a notebook, or raise :class:`GradingError` saying, in one line, what is wrong with it."""
    import nbformat

    path = Path(path)
    if not path.exists():
        raise GradingError(f"{path}: no such file")
    if path.suffix != ".ipynb":
        raise GradingError(f"{path}: expected a .ipynb notebook")
    try:
        nb = nbformat.read(str(path), as_version=4)
        nbformat.validate(nb)
    except Exception as e:  # json errors, schema errors, encoding errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GradingError(f"{path}: not a valid notebook ({type(e).__name__}: {first[:200]})") from None
    return nb


def is_master(nb) -> bool:
    """True when a notebook holds otter exercises (a raw ``# ASSIGNMENT CONFIG`` cell)."""
    return any(c.cell_type == "raw" and c.source.lstrip().startswith("# ASSIGNMENT CONFIG") for c in nb.cells)
