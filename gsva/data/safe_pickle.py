"""Read the RefCOCO-family annotation pickles (``refs(unc).p``, ``Ref_ZOM.p``, ...) without executing code.

``pickle.load`` on a downloaded file can run arbitrary code (any importable callable can be named in the stream).
These files hold only lists, dicts, tuples, strings, numbers, booleans and None, which the pickle format encodes with
opcodes that need no import, so :class:`PlainDataUnpickler` refuses every global lookup: a file that names any class
or function is rejected before anything is called (so are sets and Python-3 ``bytes`` in protocols below 4, which
need a global; the official refs files contain neither). Python 2 byte strings (the files were written by Python 2)
are decoded as UTF-8.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

from ..errors import UserError

__all__ = ["PlainDataUnpickler", "load_plain_pickle", "UnsafePickleError"]

MAX_PICKLE_BYTES = 2 * 1024**3
"""Larger files are refused (the biggest official refs pickle, RefCOCOg umd, is ~50 MB)."""


class UnsafePickleError(UserError, pickle.UnpicklingError):
    """The pickle names a class or function (so it is not plain data) or is otherwise unreadable."""


class PlainDataUnpickler(pickle.Unpickler):
    """An unpickler that admits only plain containers and scalars (list, dict, tuple, str, int, float, bool, None):
    :meth:`find_class` always raises :class:`UnsafePickleError`."""

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        raise UnsafePickleError(f"refusing to load {module}.{name}: only plain data (lists, dicts, strings, "
                                "numbers) is accepted in annotation pickles")


def load_plain_pickle(path: str | Path):
    """Load a plain-data pickle file. Raises :class:`UnsafePickleError` (with the file name) for anything else,
    FileNotFoundError if it does not exist."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_PICKLE_BYTES:
        raise UnsafePickleError(f"{path}: {size} bytes is larger than any annotation pickle ({MAX_PICKLE_BYTES})")
    data = path.read_bytes()
    try:
        return PlainDataUnpickler(io.BytesIO(data), encoding="utf-8").load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, UnicodeDecodeError,
            AttributeError, MemoryError, RecursionError) as exc:
        raise UnsafePickleError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None
