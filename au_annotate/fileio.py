"""Atomic file output: write to a temporary file in the target folder, fsync, then rename over the target.

A killed run therefore never leaves a half-written output that a later run would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TMP_PREFIX = ".au-annotate-tmp-"


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed to `path`, on error it is removed.

    Use this for libraries that want a file name (pympi, praatio, matplotlib)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; it replaces `path` only when the block exits without error."""
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
        kwargs.setdefault("newline", "")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def shipped_dirs() -> tuple[Path, Path]:
    """Where files that ship with au-annotate lie: the installed wheel's `_weights/`, then the source checkout's
    `weights/` (the HTNet checkpoints and the landmark model)."""
    package = Path(__file__).resolve().parent
    return package / "_weights", package.parent / "weights"


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (the one implementation: weights, landmark model, data identities)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_toml(path: str | os.PathLike[str], error: type[Exception]) -> dict[str, Any]:
    """A TOML file as a dict (the one reader of config files: run settings, training recipes); `error` raised with a
    message naming the file when it is missing, unreadable or not valid UTF-8 TOML."""
    p = Path(path)
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{p}: config file not found") from None
    except OSError as e:
        raise error(f"{p}: config file not readable ({e.strerror or e})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise error(f"{p}: invalid TOML: {e}") from None
