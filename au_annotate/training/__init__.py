"""Training and evaluation of the AU model on flow-picture datasets (SAMM): labels, training, LOSO metrics, baselines."""

from au_annotate.training.data import AUDataset, DatasetError, build_labels, load_dataset
from au_annotate.training.evaluate import EvalReport, EvaluationError, evaluate
from au_annotate.training.train import TrainConfig, TrainConfigError, fit_htnet, train_checkpoint, train_model

__all__ = [
    "AUDataset", "DatasetError", "EvalReport", "EvaluationError", "TrainConfig", "TrainConfigError", "build_labels",
    "evaluate", "fit_htnet", "load_dataset", "train_checkpoint", "train_model",
]
