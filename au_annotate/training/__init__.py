"""Training and evaluation of the AU model on flow-picture datasets (SAMM, the MEGC composite): labels, training,
LOSO / LODO metrics (``crossdata``), baselines, the reliable-AU rules, the reproduction of the composite's pictures.

Imports point one way: ``folds`` (inner splits, thresholds) and ``reliability`` (the reliable-AU rule) import nothing of
the package; ``train`` and ``baselines`` use them; ``evaluate`` uses ``train``, ``baselines`` and ``reliability``.

Names are imported on first use, so importing a submodule (e.g. `training.data`) does not pull in torch and sklearn.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "AUDataset": "data", "DatasetError": "data", "build_labels": "data", "load_dataset": "data",
    "load_composite": "data", "load_any": "data", "evaluate_splits": "crossdata", "SplitReport": "crossdata",
    "KAPPA_RULE": "reliability", "KappaRule": "reliability",
    "EvalReport": "evaluate", "EvaluationError": "evaluate", "evaluate": "evaluate",
    "RELIABILITY": "reliability", "ReliabilityRule": "reliability", "reliable_aus": "reliability",
    "TrainConfig": "train", "TrainConfigError": "train", "fit_htnet": "train", "train_checkpoint": "train",
    "train_model": "train",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(name)
    return getattr(importlib.import_module(f"au_annotate.training.{_WHERE[name]}"), name)
