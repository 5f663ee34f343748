"""Agreement of FACS emotion rules with SAMM's coders: rules applied to SAMM's coded AUs vs its `Estimated Emotion`.

Usage (from the repository root):

    python benchmarks/rules_agreement.py                       # shipped rules, both side/intensity policies
    python benchmarks/rules_agreement.py --rules my_rules.toml --policy accept
    python benchmarks/rules_agreement.py --csv ../shared/datasets/samm-flow28/samm.csv

Each row's `Action Units` string is parsed with au_annotate.facs.parse; every option of an "X or Y" alternative and
every ref(..) code counts as present (the coded AUs keep their side and intensity letters). The rules' prediction
("none" when no rule fires) is compared with `Estimated Emotion` (lower-cased; SAMM's "Other" has no rule, so it
agrees with "none"). Printed per policy: the confusion table (rows = SAMM, columns = rules), per-emotion precision and
recall, the share of rows where a rule fired, and the overall agreement (all rows, and rows with one of the rule
emotions). Policies: "accept" = the shipped defaults (AUs without side/intensity letters satisfy side/intensity
requirements), "reject" = side/intensity requirements need the letters (SAMM writes none for bilateral AUs).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from au_annotate.facs import FACSParseError, parse  # noqa: E402
from au_annotate.rules import RuleSet  # noqa: E402

DEFAULT_CSV = REPO.parent / "shared" / "datasets" / "samm-flow28" / "samm.csv"
NONE = "none"


@dataclass(frozen=True)
class Agreement:
    """Predictions against labels, with the counts the report prints."""

    labels: tuple[str, ...]
    predictions: tuple[str, ...]
    rules_fired: tuple[str, ...]
    unparsed: tuple[tuple[str, str], ...]  # (filename, error) for codes the parser refused
    emotions: tuple[str, ...]  # the rule emotions, in rule-file order

    @property
    def n(self) -> int:
        """Number of rows compared."""
        return len(self.labels)

    def agreement(self, only_rule_emotions: bool = False) -> tuple[int, int]:
        """(agreeing rows, rows) over all rows or over rows labelled with a rule emotion."""
        pairs = [
            (y, p)
            for y, p in zip(self.labels, self.predictions, strict=True)
            if not only_rule_emotions or y in self.emotions
        ]
        return sum(y == p or (y not in self.emotions and p == NONE) for y, p in pairs), len(pairs)

    def precision_recall(self, emotion: str) -> tuple[int, int, int]:
        """(true positives, predicted as emotion, labelled as emotion)."""
        tp = sum(y == p == emotion for y, p in zip(self.labels, self.predictions, strict=True))
        return tp, self.predictions.count(emotion), self.labels.count(emotion)


def read_samm(path: Path) -> list[dict[str, str]]:
    """Rows of SAMM's `;`-separated metadata file."""
    with open(path, encoding="utf-8", newline="") as fh:
        return [{k.strip(): (v or "").strip() for k, v in row.items()} for row in csv.DictReader(fh, delimiter=";")]


def evaluate(rows: list[dict[str, str]], rules: RuleSet) -> Agreement:
    """Apply `rules` to every row's AU code."""
    labels, preds, fired, unparsed = [], [], [], []
    for row in rows:
        labels.append(row["Estimated Emotion"].lower())
        try:
            code = parse(row["Action Units"])
        except FACSParseError as e:
            unparsed.append((row.get("Filename", "?"), str(e)))
            preds.append(NONE)
            fired.append("")
            continue
        emotion, rule = rules.match(code)
        preds.append(emotion.lower() or NONE)
        fired.append(rule)
    return Agreement(
        tuple(labels), tuple(preds), tuple(fired), tuple(unparsed), tuple(e.lower() for e in rules.emotions)
    )


def format_report(result: Agreement, title: str) -> str:
    """The confusion table, per-emotion precision/recall and the overall figures as text."""
    rows = sorted(set(result.labels), key=lambda e: (e not in result.emotions, e))
    cols = [e for e in result.emotions] + [NONE]
    counts = Counter(zip(result.labels, result.predictions, strict=True))
    w = max(len(c) for c in [*rows, *cols, "SAMM \\ rules"]) + 1
    lines = [title, "", "SAMM \\ rules".ljust(w) + "".join(c[:9].rjust(10) for c in cols) + "     total"]
    for y in rows:
        lines.append(
            y.ljust(w) + "".join(str(counts[(y, c)]).rjust(10) for c in cols) + str(result.labels.count(y)).rjust(10)
        )
    lines.append(
        "total".ljust(w) + "".join(str(result.predictions.count(c)).rjust(10) for c in cols) + str(result.n).rjust(10)
    )
    lines += ["", "emotion".ljust(w) + "precision".rjust(16) + "recall".rjust(16)]
    for e in result.emotions:
        tp, npred, nlab = result.precision_recall(e)
        prec = f"{tp}/{npred} = {tp / npred:.2f}" if npred else "0/0 = -"
        rec = f"{tp}/{nlab} = {tp / nlab:.2f}" if nlab else "0/0 = -"
        lines.append(e.ljust(w) + prec.rjust(16) + rec.rjust(16))
    fired = sum(p != NONE for p in result.predictions)
    a_all, n_all = result.agreement()
    a_emo, n_emo = result.agreement(only_rule_emotions=True)
    lines += [
        "",
        f"rows: {result.n}; a rule fired on {fired} ({fired / result.n:.1%}); FACS codes not parsed: {len(result.unparsed)}",
        f"overall agreement (all rows, 'other' = no rule): {a_all}/{n_all} = {a_all / n_all:.1%}",
        f"agreement on rows labelled with a rule emotion: {a_emo}/{n_emo} = {a_emo / max(1, n_emo):.1%}",
    ]
    lines += [f"  unparsed {name}: {err}" for name, err in result.unparsed]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: print the agreement report(s)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="SAMM metadata CSV (default: %(default)s)")
    ap.add_argument("--rules", type=Path, default=None, help="rule file (default: the shipped EMFACS rules)")
    ap.add_argument("--policy", choices=["accept", "reject", "both"], default="both",
                    help="unknown side/intensity policy to evaluate (default: both)")  # fmt: skip
    args = ap.parse_args(argv)
    if not args.csv.exists():
        print(f"{args.csv}: SAMM metadata not found", file=sys.stderr)
        return 2
    rules = RuleSet.load(args.rules)
    rows = read_samm(args.csv)
    policies = ["accept", "reject"] if args.policy == "both" else [args.policy]
    for i, policy in enumerate(policies):
        rs = rules.with_policy(unknown_side=policy, unknown_intensity=policy)
        title = f"== rules: {rules.source}; unknown side/intensity: {policy}; data: {args.csv.name} =="
        print(("\n" if i else "") + format_report(evaluate(rows, rs), title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
