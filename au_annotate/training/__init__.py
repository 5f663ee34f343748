"""Training and evaluation of the AU model on flow-picture datasets (SAMM): labels, training, LOSO metrics, baselines.

Names are imported on first use, so importing a submodule (e.g. `training.data`) does not pull in torch and sklearn.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "AUDataset": "data", "DatasetError": "data", "build_labels": "data", "load_dataset": "data",
    "EvalReport": "evaluate", "EvaluationError": "evaluate", "evaluate": "evaluate",
    "TrainConfig": "train", "TrainConfigError": "train", "fit_htnet": "train", "train_checkpoint": "train",
    "train_model": "train",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(name)
    return getattr(importlib.import_module(f"au_annotate.training.{_WHERE[name]}"), name)
