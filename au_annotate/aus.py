"""From model probabilities to Action Units and the model emotion: thresholds, reliable AUs, calibrated AUs, FACS code.

An AU is *reported* (a `_p` column) when the checkpoint marks it reliable, or for every AU with ``all_aus``. Only AUs with
a *calibrated* threshold (enough training positives, checkpoint ``meta.calibrated``) get a presence decision (`_c`) and
can appear in the `aus` code; the others are probabilities only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from au_annotate.facs import au_number, format_aus


def active_aus(names: tuple[str, ...], present: np.ndarray) -> set[int]:
    """The AU numbers whose name ('AU04') is marked present."""
    return {au_number(n) for n, p in zip(names, present, strict=True) if p}


@dataclass(frozen=True, eq=False)
class AUDecoder:
    """Selects the AUs to report and turns probabilities into presence and a FACS code."""

    au_names: tuple[str, ...]  # reported AUs, in the model's output order
    columns: np.ndarray  # int indices of those AUs in the model output
    thresholds: np.ndarray  # float32, one per reported AU
    calibrated: np.ndarray | None = None  # bool per reported AU; None = all calibrated
    model_aus: frozenset[int] = frozenset()  # every AU number the model outputs (reported or not)

    @classmethod
    def from_model(
        cls, au_names: tuple[str, ...], thresholds: np.ndarray, reliable: np.ndarray, *, all_aus: bool = False,
        calibrated: np.ndarray | None = None,
    ) -> AUDecoder:
        """Report every AU when all_aus, else only those the checkpoint marks reliable (all, if it marks none)."""
        keep = np.ones(len(au_names), dtype=bool) if all_aus or not np.any(reliable) else np.asarray(reliable, bool)
        cols = np.flatnonzero(keep)
        cal = None if calibrated is None else np.asarray(calibrated, bool)[cols]
        return cls(tuple(au_names[i] for i in cols), cols, np.asarray(thresholds, dtype=np.float32)[cols], cal,
                   frozenset(au_number(n) for n in au_names))

    @property
    def uncalibrated(self) -> tuple[str, ...]:
        """Reported AUs without a usable threshold (probability only)."""
        if self.calibrated is None:
            return ()
        return tuple(n for n, c in zip(self.au_names, self.calibrated, strict=True) if not c)

    def with_thresholds(self, overrides: Mapping[str, float]) -> AUDecoder:
        """A copy whose thresholds of the named AUs (`{"AU04": 0.42}`, a study's calibration) replace the checkpoint's;
        such an AU gets a presence decision even where the checkpoint had none. Overrides of AUs the model has but does
        not report here are ignored; a name the model does not have, or a value outside [0, 1], raises ValueError."""
        if not overrides:
            return self
        thresholds = self.thresholds.copy()
        calibrated = None if self.calibrated is None else self.calibrated.copy()
        for raw, value in overrides.items():
            number = au_number(str(raw))
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"au_thresholds: {raw} must be a probability in [0, 1], got {value!r}")
            idx = [i for i, n in enumerate(self.au_names) if au_number(n) == number]
            if not idx:
                if number not in self.model_aus:
                    raise ValueError(f"au_thresholds: {raw} is not an output of this model "
                                     f"({', '.join(self.au_names)} are reported)")
                continue
            thresholds[idx[0]] = float(value)
            if calibrated is not None:
                calibrated[idx[0]] = True
        return replace(self, thresholds=thresholds, calibrated=calibrated)

    def decode(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """probs (N, n_model_aus) -> (probs of reported AUs (N, k), presence (N, k) bool, codes)."""
        p = np.asarray(probs, dtype=np.float32)[:, self.columns]
        present = p >= self.thresholds[None, :]
        if self.calibrated is not None:
            present &= self.calibrated[None, :]
        return p, present, [format_aus(active_aus(self.au_names, row)) for row in present]


def emotion_softmax(probs: np.ndarray) -> np.ndarray:
    """Class probabilities (N, E) from the sigmoid outputs of the emotion logits (logit recovered, then softmax).

    The batch runner and ensembles hand out sigmoid probabilities for every output; inverting the sigmoid here means the
    evaluation and `annotate` turn the same numbers into the same emotion."""
    p = np.clip(np.asarray(probs, np.float64), 1e-7, 1 - 1e-7)
    logits = np.log(p) - np.log1p(-p)
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
