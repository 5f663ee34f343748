"""Which AUs a checkpoint marks reliable: one rule object that both selects the AUs and states how it selected them.

The text stored in a checkpoint (``meta.training.reliable_rule``) is ``ReliabilityRule.describe()`` of the rule that
``apply()`` ran, so the description cannot drift from the selection. The rule is about usability on its own: whether
HTNet beats the pixel logistic regression is reported by ``evaluate`` but is not a criterion (that baseline is not
shipped, so it cannot stand in for an AU that HTNet predicts well). Imports nothing heavy: any module may use it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

FREQUENT = 10  # AUs with at least this many positives are "frequent" (and may be marked reliable)
MIN_F1 = 0.4  # a reliable AU must also be usable: cross-validated F1 at least this
ALL_POSITIVE_FACTOR = 2.0  # ... and at least this many times the F1 of predicting the AU always
MIN_AUC = 0.75  # ... and rank positives above negatives clearly (pooled held-out ROC-AUC)

Tables = Mapping[str, Sequence[Mapping[str, Any]]]  # method -> per-AU metric rows (EvalReport.tables / metrics.json)


@dataclass(frozen=True)
class ReliabilityRule:
    """Thresholds on pooled held-out metrics that an AU must meet to be marked reliable."""

    min_support: int = FREQUENT
    min_f1: float = MIN_F1
    all_positive_factor: float = ALL_POSITIVE_FACTOR
    min_auc: float = MIN_AUC

    def describe(self) -> str:
        """The rule as one line of text, generated from the fields (stored in checkpoints and quoted by the card)."""
        return (
            f"support >= {self.min_support}, cross-validated F1 >= {self.min_f1:g} and >= "
            f"{self.all_positive_factor:g}x the all-positive F1, pooled cross-validated ROC-AUC >= {self.min_auc:g} "
            "(beating logistic regression is not a criterion)"
        )

    def describe_without_metrics(self) -> str:
        """The text for a checkpoint trained without an evaluation report (only the support condition was checked)."""
        return f"support >= {self.min_support} only (no cross-validated metrics: F1 and ROC-AUC were not checked)"

    def passes(self, htnet: Mapping[str, Any], all_positive: Mapping[str, Any]) -> bool:
        """Whether one AU's HTNet metrics row meets the rule, given the all-positive row of the same AU."""
        auc = htnet.get("auc")
        auc_ok = auc is not None and not math.isnan(auc) and auc >= self.min_auc  # JSON stores a NaN AUC as null
        f1_ok = htnet["f1"] >= max(self.min_f1, self.all_positive_factor * all_positive["f1"])
        return htnet["support"] >= self.min_support and f1_ok and auc_ok

    def apply(self, tables: Tables) -> list[str]:
        """The reliable AUs, in table order, from the per-AU tables of an evaluation (needs htnet and all_positive)."""
        rows = zip(tables["htnet"], tables["all_positive"], strict=True)
        return [h["au"] for h, a in rows if self.passes(h, a)]

    def apply_without_metrics(self, au_names: Sequence[str], positives: Sequence[float]) -> list[str]:
        """The AUs marked reliable when no evaluation backs the checkpoint: enough positives, nothing else checked."""
        return [au for au, n in zip(au_names, positives, strict=True) if n >= self.min_support]


RELIABILITY = ReliabilityRule()  # the rule evaluate reports and train applies


def reliable_aus(tables: Tables, rule: ReliabilityRule = RELIABILITY) -> list[str]:
    """AUs whose outputs are usable on their own under `rule` (default: the shipped rule)."""
    return rule.apply(tables)


@dataclass(frozen=True)
class CrossDatasetRule:
    """The reliable-AU rule of the two-dataset model, fixed before its results were seen (issue: cross-dataset).

    An AU is reliable when it has >= min_support positives in the training data, pooled LOSO ROC-AUC >= min_loso_auc,
    LOSO F1 >= all_positive_factor x its all-positive F1, and LODO ROC-AUC >= min_lodo_auc in every LODO direction
    whose test dataset has >= lodo_min_positives positives (directions with fewer are not judged)."""

    min_support: int = 15
    min_loso_auc: float = 0.75
    all_positive_factor: float = 2.0
    min_lodo_auc: float = 0.70
    lodo_min_positives: int = 8

    def describe(self) -> str:
        """The rule as one line, generated from the fields (stored in checkpoints, quoted by the model card)."""
        return (
            f"training positives >= {self.min_support}, pooled LOSO ROC-AUC >= {self.min_loso_auc:g}, LOSO F1 >= "
            f"{self.all_positive_factor:g}x the all-positive F1, and LODO ROC-AUC >= {self.min_lodo_auc:g} in every "
            f"leave-one-dataset-out direction whose test dataset has >= {self.lodo_min_positives} positives"
        )

    def verdicts(self, report: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """Per AU: every condition's value and whether it holds, from a merged LOSO + LODO metrics.json."""
        rows = report["rows"]
        loso = {r["au"]: r for r in rows if r["split"] == "loso"}
        lodo: dict[str, list[Mapping[str, Any]]] = {}
        for r in rows:
            if r["split"] != "loso":
                lodo.setdefault(r["au"], []).append(r)
        if not loso or not lodo:
            raise KeyError("the rule needs both a LOSO and a LODO evaluation (pass both metrics.json)")
        out = {}
        for au in report["au_names"]:
            pos = int(report["train_positives"].get(au, 0))
            lr = loso.get(au)
            auc = _num(lr.get("auc")) if lr else math.nan
            f1 = _num(lr.get("f1")) if lr else math.nan
            ap = _num(lr.get("f1_allpos")) if lr else math.nan
            judged = [r for r in lodo.get(au, []) if int(r["positives"]) >= self.lodo_min_positives]
            lodo_ok = all(_num(r.get("auc")) >= self.min_lodo_auc for r in judged)
            checks = {
                "support_ok": pos >= self.min_support,
                "loso_auc_ok": auc >= self.min_loso_auc,
                "loso_f1_ok": f1 >= self.all_positive_factor * ap,
                "lodo_auc_ok": lodo_ok,
            }
            out[au] = {"positives": pos, "loso_auc": auc, "loso_f1": f1, "f1_allpos": ap,
                       "lodo": {r["split"]: _num(r.get("auc")) for r in judged}, **checks,
                       "reliable": all(checks.values())}
        return out

    def apply(self, report: Mapping[str, Any]) -> list[str]:
        """The reliable AUs in label order."""
        return [au for au, v in self.verdicts(report).items() if v["reliable"]]


def _num(v: Any) -> float:
    """A metric from JSON (None = NaN) as a float; NaN fails every >= comparison."""
    return math.nan if v is None else float(v)


CROSS_DATASET = CrossDatasetRule()  # the rule of the SAMM + CASME II model
CALIBRATED_MIN = 10  # an AU's threshold is used (its _c column, its code in `aus`) only with this many positives
