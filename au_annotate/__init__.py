"""au-annotate: find micro-expressions in face videos and annotate their FACS Action Units."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "annotate"]


def __getattr__(name: str):  # lazy: `import au_annotate` stays cheap (no torch/cv2) until the API is used
    if name == "annotate":
        from au_annotate.api import annotate

        return annotate
    raise AttributeError(name)
