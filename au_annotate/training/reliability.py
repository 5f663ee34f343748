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
class KappaRule:
    """The reliable-AU rule of the two-dataset model (issue 25), fixed before the model it judges was trained; it
    replaced "LOSO F1 >= 2x the all-positive F1", which measures prevalence, not skill (all-positive F1 = 2p/(1+p)).

    An AU is reported by default when it has >= min_support training positives, pooled LOSO ROC-AUC >= min_loso_auc,
    pooled LOSO Cohen's kappa >= min_loso_kappa at the shipped thresholds (each fold's own, from its inner folds), LODO
    ROC-AUC >= min_lodo_auc in every direction whose test dataset has >= lodo_min_positives positives, and its threshold
    marks at most max_positive_ratio x its training prevalence as positive on the training data (the shipped model's
    inner out-of-fold probabilities)."""

    min_support: int = 15
    min_loso_auc: float = 0.75
    min_loso_kappa: float = 0.40
    min_lodo_auc: float = 0.70
    lodo_min_positives: int = 8
    max_positive_ratio: float = 2.0

    def describe(self) -> str:
        """The rule as one line, generated from the fields (stored in checkpoints, quoted by the model card)."""
        return (
            f"An AU is reported by default when it has >= {self.min_support} training positives, pooled LOSO ROC-AUC "
            f">= {self.min_loso_auc:g}, pooled LOSO Cohen's kappa >= {self.min_loso_kappa:g} at the shipped threshold, "
            f"LODO ROC-AUC >= {self.min_lodo_auc:g} in every direction whose test dataset has >= "
            f"{self.lodo_min_positives} positives, and its threshold marks at most {self.max_positive_ratio:g} times its "
            "training prevalence as positive on the training data."
        )

    def verdicts(self, report: Mapping[str, Any], positive_ratio: Mapping[str, float] | None = None,
                 ) -> dict[str, dict[str, Any]]:
        """Per AU: every condition's value and whether it holds, from a merged LOSO + LODO metrics.json and, per AU,
        the share of training samples its threshold calls positive over its prevalence (None: not known yet, the
        condition fails)."""
        rows = report["rows"]
        loso = {r["au"]: r for r in rows if r["split"] == "loso"}
        lodo: dict[str, list[Mapping[str, Any]]] = {}
        for r in rows:
            if r["split"] != "loso":
                lodo.setdefault(r["au"], []).append(r)
        if not loso or not lodo:
            raise KeyError("the rule needs both a LOSO and a LODO evaluation (pass both metrics.json)")
        ratios = positive_ratio or {}
        out = {}
        for au in report["au_names"]:
            pos = int(report["train_positives"].get(au, 0))
            lr = loso.get(au) or {}
            auc, kappa = _num(lr.get("auc")), _num(lr.get("kappa"))
            judged = [r for r in lodo.get(au, []) if int(r["positives"]) >= self.lodo_min_positives]
            ratio = _num(ratios.get(au))
            checks = {
                "support_ok": pos >= self.min_support,
                "loso_auc_ok": auc >= self.min_loso_auc,
                "loso_kappa_ok": kappa >= self.min_loso_kappa,
                "lodo_auc_ok": all(_num(r.get("auc")) >= self.min_lodo_auc for r in judged),
                "positive_ratio_ok": ratio <= self.max_positive_ratio,
            }
            out[au] = {"positives": pos, "loso_auc": auc, "loso_kappa": kappa, "loso_f1": _num(lr.get("f1")),
                       "lodo": {r["split"]: _num(r.get("auc")) for r in judged}, "positive_ratio": ratio, **checks,
                       "reliable": all(checks.values())}
        return out

    def apply(self, report: Mapping[str, Any], positive_ratio: Mapping[str, float] | None = None) -> list[str]:
        """The reliable AUs in label order."""
        return [au for au, v in self.verdicts(report, positive_ratio).items() if v["reliable"]]


def _num(v: Any) -> float:
    """A metric from JSON (None = NaN) as a float; NaN fails every >= comparison."""
    return math.nan if v is None else float(v)


KAPPA_RULE = KappaRule()  # the rule of the SAMM + CASME II model (issue 25)
CALIBRATED_MIN = 10  # an AU's threshold is used (its _c column, its code in `aus`) only with this many positives
