"""FACS emotion rules: shipped prototypes, optional AUs and min_match, side/intensity handling, malformed files."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from au_annotate.facs import AUCode, parse
from au_annotate.rules import Rule, RulesError, RuleSet

REPO = Path(__file__).resolve().parents[1]
SAMM_CSV = REPO.parent / "shared" / "datasets" / "samm-flow28" / "samm.csv"

PROTOTYPES = {
    "6+12": "happiness",
    "1+4+15": "sadness",
    "1+2+5B+26": "surprise",
    "1+2+4+5+7+20+26": "fear",
    "4+5+7+23": "anger",
    "9+15+16": "disgust",
    "R12A+R14A": "contempt",
}


@pytest.fixture(scope="module")
def default() -> RuleSet:
    return RuleSet.load()


def write(tmp_path: Path, text: str, name: str = "rules.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize(("code", "emotion"), PROTOTYPES.items())
def test_shipped_prototypes_map_to_their_emotion(default: RuleSet, code: str, emotion: str) -> None:
    assert default.match(parse(code))[0] == emotion
    strict = default.with_policy(unknown_side="reject", unknown_intensity="reject")
    assert strict.match(parse(code))[0] == emotion  # the prototypes carry their own side/intensity letters


def test_shipped_file_cites_its_source_and_covers_seven_emotions(default: RuleSet) -> None:
    text = (REPO / "au_annotate" / "data" / "emfacs_rules.toml").read_text(encoding="utf-8")
    assert "EMFACS-7" in text and "Investigator's Guide" in text
    assert set(default.emotions) == set(PROTOTYPES.values())


def test_ints_and_aucodes_are_accepted(default: RuleSet) -> None:
    assert default.match({6, 12}) == ("happiness", "happiness")
    assert default.match([AUCode(6), AUCode(12, "B")]) == ("happiness", "happiness")
    assert default.match([4, 7]) == ("", "")
    assert default.match([]) == ("", "")
    with pytest.raises(TypeError):
        default.match("6+12")  # type: ignore[arg-type]


RULES_OPT = """
format = 1
[[rule]]
name = "surprise"
emotion = "surprise"
required = "1+2"
optional = "5+26+27"
min_match = 3

[[rule]]
name = "brows"
emotion = "interest"
required = "1+2"
"""


def test_optional_aus_and_min_match(tmp_path: Path) -> None:
    rs = RuleSet.load(write(tmp_path, RULES_OPT))
    assert rs.match({1, 2}) == ("interest", "brows")  # surprise needs one optional AU more
    assert rs.match({1, 2, 26}) == ("surprise", "surprise")  # 3 matched beats 2
    assert rs.match({1, 2, 5, 26, 27}) == ("surprise", "surprise")
    assert rs.match({2, 5, 26, 27}) == ("", "")  # a required AU is missing: optional ones cannot replace it
    assert [(r.name, n) for r, n in rs.evaluate({1, 2, 5, 26})] == [("surprise", 4), ("brows", 2)]


def test_tie_breaking_completeness_then_file_order(tmp_path: Path) -> None:
    text = """
[[rule]]
name = "wide"
emotion = "a"
required = "1"
optional = "2+5+26"
min_match = 2
[[rule]]
name = "narrow"
emotion = "b"
required = "1+2"
[[rule]]
name = "narrow-too"
emotion = "c"
required = "2+1"
"""
    rs = RuleSet.load(write(tmp_path, text))
    # all three match 2 AUs; "narrow" matches all of its AUs (2/2) against "wide" (2/4); "narrow" is earlier
    assert rs.match({1, 2}) == ("b", "narrow")


def test_intensity_is_a_minimum(default: RuleSet) -> None:
    strict = default.with_policy(unknown_intensity="reject")
    assert strict.match(parse("12C")) == ("happiness", "happiness-12CD")
    assert strict.match(parse("12E")) == ("happiness", "happiness-12CD")
    assert strict.match(parse("12B")) == ("", "")
    assert strict.match(parse("12B/C")) == ("happiness", "happiness-12CD")  # a range counts as its higher letter
    assert strict.match(parse("12")) == ("", "")  # unknown intensity rejected
    assert default.match({12}) == ("happiness", "happiness-12CD")  # model output: unknown intensity accepted
    # rule intensity A (trace) asks for nothing: contempt's R12A+R14A fires on any intensity
    assert strict.match(parse("R12D+R14B")) == ("contempt", "contempt")


def test_laterality(default: RuleSet) -> None:
    strict = default.with_policy(unknown_side="reject")
    assert strict.match(parse("R12+R14")) == ("contempt", "contempt")
    assert strict.match(parse("L12+L14")) == ("contempt", "contempt")  # mirror_sides: either side
    assert strict.match(parse("U12+U14")) == ("contempt", "contempt")
    # no side letter: unknown side rejected, so contempt cannot fire; AU12 of unknown intensity still gives happiness
    assert strict.match(parse("12+14")) == ("happiness", "happiness-12CD")
    assert strict.match(parse("A12+A14")) == ("happiness", "happiness-12CD")  # asymmetric is not unilateral
    assert default.match({12, 14}) == ("contempt", "contempt")  # the model cannot see sides: accepted by default
    unmirrored = strict.with_policy(mirror_sides=False)
    assert unmirrored.match(parse("L12+L14"))[1] != "contempt"
    assert unmirrored.match(parse("R12+R14")) == ("contempt", "contempt")
    assert unmirrored.match(parse("R12+L14"))[1] != "contempt"


def test_matching_policy_from_file(tmp_path: Path) -> None:
    text = (
        '[matching]\nunknown_side = "reject"\nmirror_sides = false\n[[rule]]\nname="c"\nemotion="c"\nrequired="R12"\n'
    )
    rs = RuleSet.load(write(tmp_path, text))
    assert (rs.unknown_side, rs.unknown_intensity, rs.mirror_sides) == ("reject", "accept", False)
    assert rs.match({12}) == ("", "")
    assert rs.match(parse("R12")) == ("c", "c")
    assert rs.match(parse("L12")) == ("", "")


def test_rule_fields(tmp_path: Path) -> None:
    rs = RuleSet.load(write(tmp_path, RULES_OPT))
    r = rs.rules[0]
    assert isinstance(r, Rule)
    assert (r.name, r.emotion, r.min_match, r.line) == ("surprise", "surprise", 3, 3)
    assert r.required == (AUCode(1), AUCode(2)) and r.optional == (AUCode(5), AUCode(26), AUCode(27))
    assert rs.rules[1].min_match == 2  # default: the number of required AUs


BAD = [
    ('[[rule]]\nname = "x"\nemotion = "y"\nrequired = "6+"\n', 4, r"invalid FACS code '6\+'"),
    ('[[rule]]\nname = "x"\nemotion = "y"\nrequired = "6+12\n', 4, "invalid TOML"),
    ('[[rule]]\nname = "x"\nemotion = "y"\nrequired = "6"\nwanted = "7"\n', 5, "unknown rule key 'wanted'"),
    ('[[rule]]\nname = "x"\nrequired = "6"\n', 1, "rule #1 has no 'emotion'"),
    ('[[rule]]\nname = "x"\nemotion = "y"\nrequired = "6"\nmin_match = 3\n', 5, "'min_match' = 3 must be between 1"),
    ('[[rule]]\nname = "x"\nemotion = "y"\nrequired = "6"\nmin_match = "2"\n', 5, "must be an integer"),
    (
        '[[rule]]\nname = "x"\nemotion = "y"\nrequired = "6"\n\n[[rule]]\nname = "x"\nemotion = "z"\nrequired = "7"\n',
        7,
        "duplicate rule name 'x' \\(first at line 2\\)",
    ),
    ('[[rule]]\nname = "x"\nemotion = "y"\nrequired = "(R6 or R12)+15"\n', 4, "alternatives .* are not allowed"),
    ('[[rule]]\nname = "x"\nemotion = "y"\nrequired = "6"\noptional = "12+6"\n', 5, "AU6 is named twice"),
    ('[[rule]]\nname = "x"\nemotion = "y"\n', 1, "names no AU"),
    (
        '[matching]\nunknown_side = "maybe"\n[[rule]]\nname="x"\nemotion="y"\nrequired="6"\n',
        2,
        '\'unknown_side\' must be "accept" or "reject"',
    ),
    ("format = 1\n", 1, "defines no rules"),
    ('format = 2\n[[rule]]\nname="x"\nemotion="y"\nrequired="6"\n', 1, "unsupported rule file format 2"),
    ("rules = 1\n", 1, "unknown key 'rules'"),
]


@pytest.mark.parametrize(("text", "line", "cause"), BAD)
def test_malformed_file_names_file_line_and_cause(tmp_path: Path, text: str, line: int, cause: str) -> None:
    path = write(tmp_path, text, "my rules.toml")
    with pytest.raises(RulesError, match=rf"^{path}:{line}: .*{cause}") as info:
        RuleSet.load(path)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match=r"nope.toml: rule file not found"):
        RuleSet.load(tmp_path / "nope.toml")


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("rules_agreement", REPO / "benchmarks" / "rules_agreement.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def test_agreement_counts_on_a_small_table(default: RuleSet) -> None:
    bench = _load_benchmark()
    rows = [
        {"Filename": "a", "Action Units": "6+12", "Estimated Emotion": "Happiness"},
        {"Filename": "b", "Action Units": "4+7", "Estimated Emotion": "Anger"},
        {"Filename": "c", "Action Units": "L12+L14", "Estimated Emotion": "Contempt"},
        {"Filename": "d", "Action Units": "25", "Estimated Emotion": "Other"},
        {"Filename": "e", "Action Units": "6+12", "Estimated Emotion": "Other"},
        {"Filename": "f", "Action Units": "4+%", "Estimated Emotion": "Anger"},
    ]
    res = bench.evaluate(rows, default)
    assert res.predictions == ("happiness", "none", "contempt", "none", "happiness", "none")
    assert res.agreement() == (3, 6)  # a, c, d
    assert res.agreement(only_rule_emotions=True) == (2, 4)
    assert res.precision_recall("happiness") == (1, 2, 1)
    assert len(res.unparsed) == 1 and res.unparsed[0][0] == "f"
    text = bench.format_report(res, "t")
    assert "overall agreement (all rows, 'other' = no rule): 3/6 = 50.0%" in text


@pytest.mark.skipif(not SAMM_CSV.exists(), reason="SAMM metadata not available (../shared/datasets)")
def test_benchmark_runs_on_samm() -> None:
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "rules_agreement.py"), "--policy", "accept"],
                         capture_output=True, text=True, check=True, timeout=60).stdout  # fmt: skip
    assert "rows: 159;" in out and "FACS codes not parsed: 0" in out
    bench = _load_benchmark()
    res = bench.evaluate(bench.read_samm(SAMM_CSV), RuleSet.load())
    tp, npred, nlab = res.precision_recall("happiness")
    assert nlab == 26 and tp / npred > 0.8  # the 6+12 / 12 rules agree with SAMM's happiness codes
