"""Small helpers every stage uses to report problems the same way: one line, naming what is wrong.

Lowest layer of the package (imports nothing of it), so any module may use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

MAX_CAUSE_CHARS = 200  # a native library's message can be a page long; one line of it is enough to act on


def one_line(e: BaseException, *, with_type: bool = False, last: bool = False) -> str:
    """The first (or `last`) non-blank line of an exception's message, cut to MAX_CAUSE_CHARS; the exception's type
    name when the message is empty. `with_type` prefixes `TypeName: ` (for unexpected errors, where the type tells
    more than the text)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    text = (lines[-1] if last else lines[0])[:MAX_CAUSE_CHARS] if lines else ""
    if with_type:
        return f"{type(e).__name__}: {text}".rstrip(": ")
    return text or type(e).__name__


def unknown_keys(given: Mapping[str, object] | Iterable[str], known: Iterable[str]) -> list[str]:
    """The names in `given` that are not in `known`, sorted (empty when all are known)."""
    return sorted(set(given) - set(known))


def check_keys(given: Mapping[str, object] | Iterable[str], known: Iterable[str], what: str,
               error: type[Exception] = ValueError, *, where: str = "", list_known: bool = True) -> None:
    """Raise `error` when `given` holds names not in `known`: "WHERE: unknown WHAT(s): a, b (known: ...)".

    Config dicts, checkpoint configs and rule files all reject unknown keys: a typo must not silently fall back to a
    default, and a file from another version must not half-load."""
    known = list(known)
    extra = unknown_keys(given, known)
    if not extra:
        return
    prefix = f"{where}: " if where else ""
    choices = f" (known: {', '.join(sorted(known))})" if list_known else ""
    raise error(f"{prefix}unknown {what}(s): {', '.join(map(str, extra))}{choices}")


class AnnotateError(RuntimeError):
    """A run cannot start (bad weights, rules, formats, options...); the message is one line."""


class OutputError(RuntimeError):
    """The output folder cannot be created or written, or another run holds it."""
