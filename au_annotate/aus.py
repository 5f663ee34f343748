"""From model probabilities to Action Units: per-AU thresholds, the reliable-AU selection, and the FACS code string."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _code(names: tuple[str, ...], present: np.ndarray) -> str:
    """'4+7' style code from AU names ('AU04', 'AU07') that are present, in ascending AU number."""
    nums = sorted(int(n[2:]) for n, p in zip(names, present, strict=True) if p)
    return "+".join(str(n) for n in nums)


@dataclass(frozen=True, eq=False)
class AUDecoder:
    """Selects the AUs to report and turns probabilities into presence and a FACS code."""

    au_names: tuple[str, ...]  # reported AUs, in the model's output order
    columns: np.ndarray  # int indices of those AUs in the model output
    thresholds: np.ndarray  # float32, one per reported AU

    @classmethod
    def from_model(
        cls, au_names: tuple[str, ...], thresholds: np.ndarray, reliable: np.ndarray, *, all_aus: bool = False
    ) -> AUDecoder:
        """Report every AU when all_aus, else only those the checkpoint marks reliable (all, if it marks none)."""
        keep = np.ones(len(au_names), dtype=bool) if all_aus or not np.any(reliable) else np.asarray(reliable, bool)
        cols = np.flatnonzero(keep)
        return cls(tuple(au_names[i] for i in cols), cols, np.asarray(thresholds, dtype=np.float32)[cols])

    def decode(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """probs (N, n_model_aus) -> (probs of reported AUs (N, k), presence (N, k) bool, codes)."""
        p = np.asarray(probs, dtype=np.float32)[:, self.columns]
        present = p >= self.thresholds[None, :]
        return p, present, [_code(self.au_names, row) for row in present]
