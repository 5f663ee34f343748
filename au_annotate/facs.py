"""FACS Action Unit code parser and formatter: SAMM-style strings such as ``4+7+43A`` or ``(R6 or R12)+R15``.

Grammar (whitespace around tokens is ignored, an ``AU`` prefix such as ``AU4`` is accepted, letters are case-insensitive):

    code        := item ("+" item)*
    item        := alternative | "(" alternative ")" | au | note
    alternative := au ("or" au)+                     -- the coder was unsure: "X or Y"
    au          := "ref(" plain ")" | plain          -- ref(..): present but referenced (coded relative to another AU)
    plain       := [side] number [intensity]
    side        := S | S "/" S      with S in L R A T B U  (left, right, asymmetric, top, bottom, unilateral; "A/L"
                                    = coder unsure between two)
    number      := 1..99
    intensity   := I | I "/" I      with I in A..E     (A trace .. E maximum; "A/B" = between)
    note        := a known non-AU descriptor (``soft focus``), kept in ``FACSCode.notes``

"or" binds tighter than "+": ``4+7 or 12`` is AU4 plus (AU7 or AU12); parentheses around an alternative are optional.
Prefix letters come before the number and suffix letters after it, so ``A1B`` is asymmetric AU1 at intensity B and
``B18`` is bottom-lip AU18 with unspecified intensity. Canonical text (``str``/``format_code``): side letters, the number
without leading zeros, the intensity, ``ref(..)`` around a referenced code, ``+`` between items without spaces, and an
alternative as ``X or Y`` (in parentheses when the code has more than one item); notes come last.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

SIDES = "LRATBU"
INTENSITIES = "ABCDE"
KNOWN_NOTES: frozenset[str] = frozenset({"soft focus"})
ALTERNATIVE_RULES = ("all", "first", "none")

_PLAIN_RE = re.compile(r"(?:AU)?(?P<side>[LRATBU](?:/[LRATBU])?)?(?P<au>[0-9]{1,2})(?P<intensity>[A-E](?:/[A-E])?)?")
_REF_RE = re.compile(r"REF\s*\((?P<inner>[^()]*)\)")
_OR_RE = re.compile(r"\s*or\s*", re.IGNORECASE)  # "o" occurs in no code token, so "or" is unambiguous
_AU_NAME_RE = re.compile(r"\s*AU\s*0*([0-9]{1,2})\s*", re.IGNORECASE)


class FACSParseError(ValueError):
    """A FACS code string is malformed; the message names the offending token and the whole input."""

    def __init__(self, token: str, text: str, reason: str = "not a FACS action unit code") -> None:
        self.token = token
        self.text = text
        self.reason = reason
        super().__init__(f"invalid FACS code {text!r}: {reason}: {token!r}")


@functools.total_ordering
@dataclass(frozen=True)
class AUCode:
    """One Action Unit as coded: number, intensity (None = unspecified), side/position prefix, referenced flag.

    Sortable by (au, intensity, side, referenced) with None before any letter (dataclass order=True would raise on
    None vs str)."""

    au: int
    intensity: str | None = None
    side: str | None = None
    referenced: bool = False

    def __post_init__(self) -> None:
        """Reject values that have no FACS text form, so every AUCode formats and parses back to itself."""
        if isinstance(self.au, bool) or not isinstance(self.au, int) or not 1 <= self.au <= 99:
            raise ValueError(f"AU number must be an int in 1..99, got {self.au!r}")
        if self.intensity is not None and not re.fullmatch(r"[A-E](?:/[A-E])?", self.intensity):
            raise ValueError(f"intensity must be A..E or a range like 'A/B', got {self.intensity!r}")
        if self.side is not None and not re.fullmatch(r"[LRATBU](?:/[LRATBU])?", self.side):
            raise ValueError(f"side must be one of L R A T B U (or two joined by '/'), got {self.side!r}")

    def _key(self) -> tuple[int, str, str, bool]:
        return (self.au, self.intensity or "", self.side or "", self.referenced)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, AUCode):
            return NotImplemented
        return self._key() < other._key()

    def __str__(self) -> str:
        """Canonical FACS token: ``R12A``, ``43C``, ``10A/B``, ``ref(L10)``."""
        body = f"{self.side or ''}{self.au}{self.intensity or ''}"
        return f"ref({body})" if self.referenced else body


@dataclass(frozen=True)
class Alternative:
    """The coder was unsure between these codes ("X or Y")."""

    options: tuple[AUCode, ...]

    def __post_init__(self) -> None:
        """An alternative needs at least two options."""
        if len(self.options) < 2 or not all(isinstance(o, AUCode) for o in self.options):
            raise ValueError(f"an Alternative needs at least two AUCode options, got {self.options!r}")

    def __str__(self) -> str:
        """``R6 or R12``."""
        return " or ".join(str(o) for o in self.options)


@dataclass(frozen=True)
class FACSCode:
    """A parsed FACS string: its items in input order, plus non-AU descriptors (``soft focus``) as notes."""

    items: tuple[AUCode | Alternative, ...]
    notes: tuple[str, ...] = ()

    def aus(self, alternatives: str = "all", referenced: bool = True) -> frozenset[int]:
        """AU numbers present, at any intensity and on any side.

        Rule for "X or Y": ``all`` (default) counts every option as present, ``first`` only the first option, ``none``
        drops the alternative. ``referenced=False`` leaves out ``ref(..)`` codes (by default they count: present)."""
        if alternatives not in ALTERNATIVE_RULES:
            raise ValueError(f"alternatives must be one of {ALTERNATIVE_RULES}, got {alternatives!r}")
        out: set[int] = set()
        for item in self.items:
            if isinstance(item, Alternative):
                if alternatives == "none":
                    continue
                options = item.options if alternatives == "all" else item.options[:1]
            else:
                options = (item,)
            out.update(o.au for o in options if referenced or not o.referenced)
        return frozenset(out)

    def codes(self) -> tuple[AUCode, ...]:
        """Every AUCode in input order, alternatives flattened."""
        out: list[AUCode] = []
        for item in self.items:
            out.extend(item.options if isinstance(item, Alternative) else (item,))
        return tuple(out)

    def __str__(self) -> str:
        """Canonical text, the same as ``format_code(self)``."""
        return format_code(self)


def _parse_plain(token: str, text: str, *, allow_ref: bool = True) -> AUCode:
    """One AU token (optionally ``ref(..)``) -> AUCode."""
    t = token.strip().upper()
    ref = _REF_RE.fullmatch(t)
    if ref:
        if not allow_ref:
            raise FACSParseError(token.strip(), text, "nested ref()")
        inner = _parse_plain(ref.group("inner"), text, allow_ref=False)
        return AUCode(inner.au, inner.intensity, inner.side, True)
    m = _PLAIN_RE.fullmatch(t)
    if not m or not 1 <= int(m.group("au")) <= 99:
        raise FACSParseError(token.strip(), text)
    return AUCode(int(m.group("au")), m.group("intensity"), m.group("side"), False)


def _split_top(text: str) -> list[str]:
    """Split on '+' outside parentheses; raises on unbalanced parentheses."""
    parts: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise FACSParseError(")", text, "unbalanced parenthesis")
        elif ch == "+" and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise FACSParseError("(", text, "unbalanced parenthesis")
    parts.append(text[start:])
    return parts


def _parse_item(part: str, text: str) -> AUCode | Alternative | str:
    """One '+'-separated item -> AUCode, Alternative, or a known note string."""
    p = " ".join(part.split())
    if not p:
        raise FACSParseError(part, text, "empty item (stray '+')")
    if p.lower() in KNOWN_NOTES:
        return p.lower()
    inner = p
    grouped = False
    if p.startswith("(") and p.endswith(")") and not _REF_RE.fullmatch(p.upper()):
        inner = p[1:-1].strip()
        grouped = True
    options = [o.strip() for o in _OR_RE.split(inner)]
    if len(options) > 1:
        if any(not o for o in options):
            raise FACSParseError(p, text, "'or' needs a code on both sides")
        return Alternative(tuple(_parse_plain(o, text) for o in options))
    if grouped:
        raise FACSParseError(p, text, "parentheses must hold an 'X or Y' alternative")
    return _parse_plain(p, text)


def parse(text: str) -> FACSCode:
    """Parse a FACS string (``4+7+43A``, ``(R6 or R12)+R15``, ``ref(7B)+43C``) into a FACSCode.

    Raises FACSParseError naming the offending token for malformed input (including an empty string)."""
    if not isinstance(text, str):
        raise TypeError(f"parse() expects str, got {type(text).__name__}")
    if not text.strip():
        raise FACSParseError(text, text, "empty code")
    items: list[AUCode | Alternative] = []
    notes: list[str] = []
    for part in _split_top(text):
        item = _parse_item(part, text)
        if isinstance(item, str):
            notes.append(item)
        else:
            items.append(item)
    if not items and not notes:
        raise FACSParseError(text, text, "no action unit")
    return FACSCode(tuple(items), tuple(notes))


def format_code(code: FACSCode | Iterable[AUCode | Alternative]) -> str:
    """Canonical text ``4+7+43A``; ``parse(format_code(c)) == c`` for every FACSCode."""
    if isinstance(code, FACSCode):
        items, notes = code.items, code.notes
    else:
        items, notes = tuple(code), ()
    several = len(items) + len(notes) > 1
    parts = [f"({item})" if isinstance(item, Alternative) and several else str(item) for item in items]
    return "+".join([*parts, *notes])


def format_aus(aus: Iterable[int]) -> str:
    """Sorted ``4+7`` for a set of AU numbers (e.g. predicted AUs); empty string for none."""
    return "+".join(str(a) for a in sorted({int(a) for a in aus}))


def au_name(au: int) -> str:
    """OpenFace-style column name: 4 -> ``AU04``."""
    if isinstance(au, bool) or not isinstance(au, int) or not 1 <= au <= 99:
        raise ValueError(f"AU number must be an int in 1..99, got {au!r}")
    return f"AU{au:02d}"


def au_number(name: str) -> int:
    """``AU04`` (or ``AU4``, ``au04``) -> 4; raises ValueError naming the input otherwise."""
    m = _AU_NAME_RE.fullmatch(name) if isinstance(name, str) else None
    if not m or not 1 <= int(m.group(1)) <= 99:
        raise ValueError(f"not an AU name like 'AU04': {name!r}")
    return int(m.group(1))
