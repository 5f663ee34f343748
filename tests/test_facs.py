"""FACS code parser: every SAMM row, hand-picked hard cases, and property tests."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from au_annotate.facs import (
    Alternative,
    AUCode,
    FACSCode,
    FACSParseError,
    au_name,
    au_number,
    format_aus,
    format_code,
    parse,
)

SAMM = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "samm-flow28" / "samm.csv"


def _samm_codes() -> list[str]:
    with open(SAMM, newline="", encoding="utf-8-sig") as fh:
        return [row["Action Units"] for row in csv.DictReader(fh, delimiter=";")]


@pytest.mark.skipif(not SAMM.exists(), reason="SAMM dataset not available")
def test_all_samm_rows_parse_and_keep_every_au() -> None:
    codes = _samm_codes()
    assert len(codes) == 159
    for text in codes:
        code = parse(text)
        numbers = {int(n) for n in re.findall(r"\d+", text)}
        assert code.aus() == numbers, text  # no AU silently dropped, none invented
        assert parse(format_code(code)) == code
    # the seed lost A/T/B-prefixed codes; every row must now carry at least one AU
    assert all(parse(t).aus() for t in codes)


@pytest.mark.parametrize(
    ("text", "items"),
    [
        ("4+7+43A", (AUCode(4), AUCode(7), AUCode(43, "A"))),
        ("15A+17", (AUCode(15, "A"), AUCode(17))),
        ("(R6 or R12)+R15", (Alternative((AUCode(6, side="R"), AUCode(12, side="R"))), AUCode(15, side="R"))),
        ("ref(7B)+43C", (AUCode(7, "B", referenced=True), AUCode(43, "C"))),
        ("A1B+A2C", (AUCode(1, "B", "A"), AUCode(2, "C", "A"))),
        ("13+T18+39", (AUCode(13), AUCode(18, side="T"), AUCode(39))),
        ("10A/B", (AUCode(10, "A/B"),)),
        ("B18+25", (AUCode(18, side="B"), AUCode(25))),
        ("L12 + 61", (AUCode(12, side="L"), AUCode(61))),
        ("7B+ ref(43)", (AUCode(7, "B"), AUCode(43, referenced=True))),
        ("ref(L10)+A12B", (AUCode(10, side="L", referenced=True), AUCode(12, "B", "A"))),
        ("A/L12", (AUCode(12, side="A/L"),)),
        ("R14A or 17A or 24A", (Alternative((AUCode(14, "A", "R"), AUCode(17, "A"), AUCode(24, "A"))),)),
        ("12+15 ", (AUCode(12), AUCode(15))),
        ("  4 +\t7 ", (AUCode(4), AUCode(7))),
        ("AU4+au07", (AUCode(4), AUCode(7))),
        ("r6 OR r12", (Alternative((AUCode(6, side="R"), AUCode(12, side="R"))),)),
        ("U14E", (AUCode(14, "E", "U"),)),
    ],
)
def test_hard_cases(text: str, items: tuple) -> None:
    assert parse(text).items == items


def test_prefix_vs_suffix_letters() -> None:
    # prefix A = asymmetric, suffix A = trace intensity; prefix B = bottom lip, suffix B = intensity B
    assert parse("A12") == FACSCode((AUCode(12, side="A"),))
    assert parse("12A") == FACSCode((AUCode(12, intensity="A"),))
    assert parse("A12A") == FACSCode((AUCode(12, intensity="A", side="A"),))
    assert parse("B18B") == FACSCode((AUCode(18, intensity="B", side="B"),))


def test_notes_are_kept_apart_from_aus() -> None:
    code = parse("R14+17+soft focus")
    assert code.aus() == {14, 17}
    assert code.notes == ("soft focus",)
    assert format_code(code) == "R14+17+soft focus"


def test_alternative_rules() -> None:
    code = parse("(R6 or R12)+R15")
    assert code.aus() == {6, 12, 15}
    assert code.aus("first") == {6, 15}
    assert code.aus("none") == {15}
    with pytest.raises(ValueError):
        code.aus("any")


def test_referenced_rule() -> None:
    code = parse("ref(7B)+43C")
    assert code.aus() == {7, 43}
    assert code.aus(referenced=False) == {43}


def test_canonical_formatting() -> None:
    assert format_code(parse("(R6 or R12) + R15")) == "(R6 or R12)+R15"
    assert format_code(parse("(L12 or L14)")) == "L12 or L14"
    assert format_code([AUCode(4), AUCode(43, "A")]) == "4+43A"
    assert str(AUCode(7, "B", referenced=True)) == "ref(7B)"
    assert str(parse("AU04+AU7")) == "4+7"


@pytest.mark.parametrize(
    ("text", "token"),
    [
        ("", ""),
        ("4+", ""),
        ("4++7", ""),
        ("4+X", "X"),
        ("4F", "4F"),
        ("100", "100"),
        ("0", "0"),
        ("(4)", "(4)"),
        ("4 or", "4 or"),
        ("ref(ref(4))", "ref(ref(4))"),
        ("ref(4", "("),
        ("4)+7", ")"),
        ("12+soft", "soft"),
    ],
)
def test_malformed_input_names_token(text: str, token: str) -> None:
    with pytest.raises(FACSParseError) as err:
        parse(text)
    assert err.value.token == token
    assert repr(text) in str(err.value)


def test_au_names() -> None:
    assert au_name(4) == "AU04"
    assert au_name(43) == "AU43"
    assert au_number("AU04") == 4
    assert au_number("au4") == 4
    assert all(au_number(au_name(n)) == n for n in range(1, 100))
    for bad in ("A04", "AU", "AU100", "4"):
        with pytest.raises(ValueError):
            au_number(bad)
    with pytest.raises(ValueError):
        au_name(0)


def test_aucodes_sort() -> None:
    codes = [AUCode(12, "B"), AUCode(4, "A", "L"), AUCode(4), AUCode(4, "A"), AUCode(4, referenced=True)]
    assert sorted(codes) == [AUCode(4), AUCode(4, referenced=True), AUCode(4, "A"), AUCode(4, "A", "L"), AUCode(12, "B")]
    assert AUCode(4) <= AUCode(4) and AUCode(43) > AUCode(7)


def test_format_aus() -> None:
    assert format_aus([7, 4, 43, 4]) == "4+7+43"
    assert format_aus([]) == ""


def test_invalid_aucode_fields() -> None:
    for kwargs in ({"au": 0}, {"au": 4, "intensity": "F"}, {"au": 4, "side": "X"}):
        with pytest.raises(ValueError):
            AUCode(**kwargs)
    with pytest.raises(ValueError):
        Alternative((AUCode(4),))


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("0123456789ABCDELRTU+/() orOReEfF\t xX")), max_size=25) | st.text())
def test_random_text_raises_only_parse_error(text: str) -> None:
    try:
        code = parse(text)
    except FACSParseError:
        return
    # whatever parses must format and parse back to the same structure
    assert parse(format_code(code)) == code


_sides = st.none() | st.sampled_from(list("LRATBU")) | st.tuples(
    st.sampled_from(list("LRATBU")), st.sampled_from(list("LRATBU"))
).map("/".join)
_intens = st.none() | st.sampled_from(list("ABCDE")) | st.tuples(
    st.sampled_from(list("ABCDE")), st.sampled_from(list("ABCDE"))
).map("/".join)
_au_codes = st.builds(AUCode, au=st.integers(1, 99), intensity=_intens, side=_sides, referenced=st.booleans())
_items = _au_codes | st.lists(_au_codes, min_size=2, max_size=3).map(lambda o: Alternative(tuple(o)))
_codes = st.builds(
    FACSCode,
    items=st.lists(_items, min_size=1, max_size=5).map(tuple),
    notes=st.lists(st.just("soft focus"), max_size=1).map(tuple),
)


@settings(max_examples=300, deadline=None)
@given(_codes)
def test_format_parse_round_trip(code: FACSCode) -> None:
    text = format_code(code)
    assert parse(text) == code
    assert format_code(parse(text)) == text
    # whitespace variants parse to the same code
    assert parse(text.replace("+", " + ")) == code
