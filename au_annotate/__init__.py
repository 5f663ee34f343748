"""au-annotate: find micro-expressions in face videos and annotate their FACS Action Units."""

from __future__ import annotations

import os

from au_annotate._version import __version__

# torch's OpenMP threads spin-wait by default; next to decode workers and other jobs on the same cores that made a
# 10-window forward pass take 620 ms instead of 8 ms. It only takes effect when set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["__version__", "annotate"]


def __getattr__(name: str):  # lazy: `import au_annotate` stays cheap (no torch/cv2) until the API is used
    if name == "annotate":
        from au_annotate.api import annotate

        return annotate
    raise AttributeError(name)
