"""FACS emotion rules: a TOML file maps Action Unit combinations to emotions; `RuleSet.match` applies it to AUs.

Rule file (the shipped default is au_annotate/data/emfacs_rules.toml)::

    format = 1                      # optional; also optional: title = "...", description = "..."
    [matching]                      # optional; how missing information in the observed AUs is treated
    unknown_side = "accept"         # observed AU without a side satisfies a rule AU with a side (accept | reject)
    unknown_intensity = "accept"    # observed AU without intensity satisfies a minimum intensity (accept | reject)
    mirror_sides = true             # a rule's L or R (or U) accepts any unilateral side: L, R or U

    [[rule]]
    name = "surprise"               # unique; reported in the CSV's `rule` column
    emotion = "surprise"            # reported in the `emotion` column
    required = "1+2"                # FACS code: every AU here must be present
    optional = "5B+26+27"           # FACS code: each present one counts toward min_match
    min_match = 3                   # AUs of required+optional that must match (default: the number required)
    source = "EMFACS variant"       # free text, optional

A rule fires when all its required AUs are present and at least `min_match` of its required + optional AUs are.
AU codes use the project's FACS notation (au_annotate.facs): a rule AU `5B` means AU5 at intensity B or more (`A` =
any), `R12` AU12 on the right side; a rule AU without side or intensity accepts any side and intensity. An observed
range `A/B` counts as its higher letter; observed `A` (asymmetric) satisfies only a rule `A`. The model predicts AU
presence only (no side, no intensity), so its AUs are matched under `unknown_side` / `unknown_intensity`; with the
defaults ("accept") `R12A+R14A` fires on AU12 + AU14, with "reject" it cannot fire on model output at all.

Tie-breaking when several rules fire: the rule with the most matched AUs wins; then the one whose AUs are most
completely matched (matched / (required + optional)); then the one earlier in the file.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from au_annotate.errors import unknown_keys
from au_annotate.facs import Alternative, AUCode, FACSCode, FACSParseError, parse

DEFAULT_RULES_NAME = "emfacs_rules.toml"
RULE_KEYS = frozenset({"name", "emotion", "required", "optional", "min_match", "source"})
MATCHING_KEYS = frozenset({"unknown_side", "unknown_intensity", "mirror_sides"})
TOP_KEYS = frozenset({"format", "matching", "rule", "title", "description"})
UNILATERAL = frozenset("LRU")


class RulesError(ValueError):
    """A rule file is malformed; the message is `<file>:<line>: <cause>`."""


@dataclass(frozen=True)
class Rule:
    """One emotion rule: required and optional AUs (FACS codes) and how many of them must match."""

    name: str
    emotion: str
    required: tuple[AUCode, ...]
    optional: tuple[AUCode, ...] = ()
    min_match: int = 1
    source: str = ""
    line: int = 0  # line of the rule's [[rule]] header in its file (0 when built in code)

    @property
    def size(self) -> int:
        """Number of AUs the rule names (required + optional)."""
        return len(self.required) + len(self.optional)

    def __str__(self) -> str:
        """Readable one-line form: `name: required opt optional (min n) -> emotion`."""
        opt = f" opt {'+'.join(map(str, self.optional))}" if self.optional else ""
        return f"{self.name}: {'+'.join(map(str, self.required)) or '-'}{opt} (min {self.min_match}) -> {self.emotion}"


def _max_intensity(intensity: str | None) -> str | None:
    """`B` -> `B`, a range `A/B` -> `B` (its higher letter), None -> None."""
    return None if intensity is None else max(intensity.split("/"))


def _min_intensity(intensity: str | None) -> str | None:
    """The minimum a rule asks for: `B` -> `B`, `B/C` -> `B`; `A` (trace) asks for nothing."""
    if intensity is None:
        return None
    low = min(intensity.split("/"))
    return None if low == "A" else low


@dataclass(frozen=True)
class RuleSet:
    """An ordered list of rules plus the policy for side/intensity information the observation lacks."""

    rules: tuple[Rule, ...]
    source: str = "<rules>"
    unknown_side: str = "accept"
    unknown_intensity: str = "accept"
    mirror_sides: bool = True

    @classmethod
    def load(cls, path: str | Path | None = None) -> RuleSet:
        """Read a rule file (None = the shipped EMFACS-based default); malformed files raise RulesError."""
        if path is None:
            ref = resources.files("au_annotate").joinpath("data", DEFAULT_RULES_NAME)
            return cls.from_text(ref.read_text(encoding="utf-8"), source=DEFAULT_RULES_NAME)
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RulesError(f"{p}: rule file not found") from None
        except UnicodeDecodeError as e:
            raise RulesError(f"{p}: not UTF-8 text ({e.reason})") from None
        except OSError as e:
            raise RulesError(f"{p}: cannot read rule file: {e.strerror or e}") from None
        return cls.from_text(text, source=str(p))

    @classmethod
    def from_text(cls, text: str, source: str = "<rules>") -> RuleSet:
        """Parse rule-file text; `source` names the file in error messages."""
        return _parse_rules(text, source)

    def with_policy(self, **changes: Any) -> RuleSet:
        """A copy with other `unknown_side` / `unknown_intensity` / `mirror_sides` values."""
        for key in ("unknown_side", "unknown_intensity"):
            if key in changes and changes[key] not in ("accept", "reject"):
                raise ValueError(f"{key} must be 'accept' or 'reject', got {changes[key]!r}")
        return dataclasses.replace(self, **changes)

    def _side_ok(self, want: str | None, got: str | None) -> bool:
        if want is None:
            return True
        if got is None:
            return self.unknown_side == "accept"
        for w in want.split("/"):
            for g in got.split("/"):
                if w == g or (self.mirror_sides and w in UNILATERAL and g in UNILATERAL):
                    return True
        return False

    def _intensity_ok(self, want: str | None, got: str | None) -> bool:
        low = _min_intensity(want)
        if low is None:
            return True
        high = _max_intensity(got)
        if high is None:
            return self.unknown_intensity == "accept"
        return high >= low

    def _satisfied(self, want: AUCode, observed: list[AUCode]) -> bool:
        return any(
            o.au == want.au and self._side_ok(want.side, o.side) and self._intensity_ok(want.intensity, o.intensity)
            for o in observed
        )

    def evaluate(self, aus: Iterable[AUCode | int] | FACSCode) -> list[tuple[Rule, int]]:
        """Every rule that fires on `aus`, with its number of matched AUs, in file order."""
        observed = _observed(aus)
        fired: list[tuple[Rule, int]] = []
        for rule in self.rules:
            if not all(self._satisfied(r, observed) for r in rule.required):
                continue
            n = len(rule.required) + sum(self._satisfied(o, observed) for o in rule.optional)
            if n >= rule.min_match:
                fired.append((rule, n))
        return fired

    def match(self, aus: Iterable[AUCode | int] | FACSCode) -> tuple[str, str]:
        """(emotion, rule name) of the best rule firing on `aus`, or ("", "") when none fires (see module doc)."""
        fired = self.evaluate(aus)
        if not fired:
            return "", ""
        order = {id(r): i for i, r in enumerate(self.rules)}
        best, _ = max(fired, key=lambda t: (t[1], t[1] / max(1, t[0].size), -order[id(t[0])]))
        return best.emotion, best.name

    @property
    def emotions(self) -> tuple[str, ...]:
        """The emotions the rules can produce, in file order, without repeats."""
        return tuple(dict.fromkeys(r.emotion for r in self.rules))


def _observed(aus: Iterable[AUCode | int] | FACSCode) -> list[AUCode]:
    """Normalise the input of match(): ints, AUCodes, Alternatives (every option counts) or a FACSCode."""
    if isinstance(aus, FACSCode):
        return list(aus.codes())
    if isinstance(aus, str):
        raise TypeError("match() takes AU numbers or AUCodes; parse a FACS string with au_annotate.facs.parse first")
    out: list[AUCode] = []
    for a in aus:
        if isinstance(a, AUCode):
            out.append(a)
        elif isinstance(a, Alternative):
            out.extend(a.options)
        elif isinstance(a, FACSCode):
            out.extend(a.codes())
        else:
            out.append(AUCode(int(a)))
    return out


# ------------------------------------------------------------------------------------------------ parsing

_RULE_HEADER = re.compile(r"^\s*\[\[\s*rule\s*\]\]")
_TABLE_HEADER = re.compile(r"^\s*\[")
_TOML_LINE = re.compile(r"\s*\(at line (\d+), column (\d+)\)")


def _rule_lines(text: str) -> list[tuple[int, dict[str, int]]]:
    """For each [[rule]] block: its header line and the line of each `key =` inside it (1-based)."""
    blocks: list[tuple[int, dict[str, int]]] = []
    current: dict[str, int] | None = None
    for i, line in enumerate(text.splitlines(), start=1):
        if _RULE_HEADER.match(line):
            current = {}
            blocks.append((i, current))
        elif _TABLE_HEADER.match(line):
            current = None
        elif current is not None:
            m = re.match(r"^\s*([A-Za-z0-9_\-\"']+)\s*=", line)
            if m:
                current.setdefault(m.group(1).strip("\"'"), i)
    return blocks


def _key_line(text: str, key: str, table: str | None = None) -> int:
    """Line of a top-level key (table None) or of a key inside `[table]`; 1 when not found."""
    inside = table is None
    for i, line in enumerate(text.splitlines(), start=1):
        if _TABLE_HEADER.match(line):
            inside = table is not None and re.match(rf"^\s*\[\s*{re.escape(table)}\s*\]", line) is not None
            if table is None:
                break
            continue
        if inside and re.match(rf"^\s*{re.escape(key)}\s*=", line):
            return i
    return 1


def _parse_code(value: Any, where: str, field: str) -> tuple[AUCode, ...]:
    """A rule's `required`/`optional` value (a FACS string, "" for none) -> AUCodes."""
    if not isinstance(value, str):
        raise RulesError(f"{where}: '{field}' must be a FACS code string like \"6+12\", got {value!r}")
    if not value.strip():
        return ()
    try:
        code = parse(value)
    except FACSParseError as e:
        raise RulesError(f"{where}: '{field}': {e}") from None
    if code.notes:
        raise RulesError(f"{where}: '{field}': descriptors like {code.notes[0]!r} cannot be used in a rule")
    for item in code.items:
        if isinstance(item, Alternative):
            raise RulesError(f"{where}: '{field}': alternatives ('{item}') are not allowed in a rule; write two rules")
        if item.referenced:
            raise RulesError(f"{where}: '{field}': ref() codes are not allowed in a rule: '{item}'")
    return tuple(item for item in code.items if isinstance(item, AUCode))


def _parse_rules(text: str, source: str) -> RuleSet:
    """Rule-file text -> RuleSet, raising RulesError `<source>:<line>: <cause>`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = _TOML_LINE.search(msg)
        line = m.group(1) if m else "1"
        cause = f"{msg[: m.start()].strip()} (column {m.group(2)})" if m else msg
        raise RulesError(f"{source}:{line}: invalid TOML: {cause}") from None
    unknown = unknown_keys(data, TOP_KEYS)
    if unknown:
        raise RulesError(f"{source}:{_key_line(text, unknown[0])}: unknown key '{unknown[0]}' "
                         f"(expected: format, matching, rule)")  # fmt: skip
    fmt = data.get("format", 1)
    if fmt != 1:
        raise RulesError(f"{source}:{_key_line(text, 'format')}: unsupported rule file format {fmt!r} (expected 1)")

    policy: dict[str, Any] = {}
    matching = data.get("matching", {})
    if not isinstance(matching, dict):
        raise RulesError(f"{source}:{_key_line(text, 'matching')}: 'matching' must be a table")
    for key, value in matching.items():
        where = f"{source}:{_key_line(text, key, 'matching')}"
        if key not in MATCHING_KEYS:
            raise RulesError(f"{where}: unknown matching option '{key}' (expected: {', '.join(sorted(MATCHING_KEYS))})")
        if key == "mirror_sides":
            if not isinstance(value, bool):
                raise RulesError(f"{where}: 'mirror_sides' must be true or false, got {value!r}")
        elif value not in ("accept", "reject"):
            raise RulesError(f'{where}: \'{key}\' must be "accept" or "reject", got {value!r}')
        policy[key] = value

    raw_rules = data.get("rule", [])
    if not isinstance(raw_rules, list):
        raise RulesError(f"{source}:{_key_line(text, 'rule')}: rules must be [[rule]] tables")
    lines = _rule_lines(text)
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for idx, raw in enumerate(raw_rules):
        header, keys = lines[idx] if idx < len(lines) else (1, {})

        def where(key: str | None = None, _h: int = header, _k: dict[str, int] = keys) -> str:
            return f"{source}:{_k.get(key, _h) if key else _h}"

        extra = unknown_keys(raw, RULE_KEYS)
        if extra:
            raise RulesError(
                f"{where(extra[0])}: unknown rule key '{extra[0]}' (expected: {', '.join(sorted(RULE_KEYS))})"
            )
        for key in ("name", "emotion"):
            if key not in raw:
                raise RulesError(f"{where()}: rule #{idx + 1} has no '{key}'")
            if not isinstance(raw[key], str) or not raw[key].strip():
                raise RulesError(f"{where(key)}: '{key}' must be a non-empty string, got {raw[key]!r}")
        name = raw["name"].strip()
        if name in seen:
            raise RulesError(f"{where('name')}: duplicate rule name '{name}' (first at line {seen[name]})")
        seen[name] = keys.get("name", header)
        required = _parse_code(raw.get("required", ""), where("required"), "required")
        optional = _parse_code(raw.get("optional", ""), where("optional"), "optional")
        both = [a.au for a in required + optional]
        dup = sorted({a for a in both if both.count(a) > 1})
        if dup:
            raise RulesError(f"{where('optional' if 'optional' in raw else 'required')}: AU{dup[0]} is named twice")
        if not required and not optional:
            raise RulesError(f"{where()}: rule '{name}' names no AU (give 'required' and/or 'optional')")
        min_match = raw.get("min_match", max(1, len(required)))
        if isinstance(min_match, bool) or not isinstance(min_match, int):
            raise RulesError(f"{where('min_match')}: 'min_match' must be an integer, got {min_match!r}")
        if not 1 <= min_match <= len(required) + len(optional):
            raise RulesError(
                f"{where('min_match')}: 'min_match' = {min_match} must be between 1 and the number of AUs the rule "
                f"names ({len(required) + len(optional)})"
            )
        src = raw.get("source", "")
        if not isinstance(src, str):
            raise RulesError(f"{where('source')}: 'source' must be a string, got {src!r}")
        rules.append(Rule(name, raw["emotion"].strip(), required, optional, min_match, src, header))
    if not rules:
        raise RulesError(f"{source}:1: no [[rule]] tables: the file defines no rules")
    return RuleSet(tuple(rules), source=source, **policy)
