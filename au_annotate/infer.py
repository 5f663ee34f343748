"""Inference: the batch runner that `annotate` and `predict` use. Flow pictures in, per-AU probabilities out (NumPy).

It puts (a copy of) the loaded model and the pictures on the chosen device; training (au_annotate/training) runs its
own loop on the CPU and does not come here. Windows from all videos are stacked and run in batches under
``torch.inference_mode()``; the sigmoid is applied once, here, to the model's logits. CPU thread settings are left as
the user (or torch) set them.

Batches always have the same shape (batch_size, 3, S, S): the last one is padded with blank pictures. The kernels
PyTorch picks depend on the shape, so a window never goes through another algorithm because its call had fewer windows.
Its probabilities can still change in the last bits with its position in the batch and its batch mates: BLAS and
oneDNN kernels process the batch rows in blocks, and on some CPUs a row at another position is summed in another order
(seen on an AMD EPYC: one value of 275 off by 6e-8, with one thread too). What holds on every CPU: however the windows
are batched, each probability is the same to within 1e-6, so the AU decisions are the same unless a probability lies
within 1e-6 of its threshold. (On most CPUs the results are bit-identical; that is not promised.)
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from au_annotate.flow import images_to_input
from au_annotate.weights import LoadedModel

DEVICE_CHOICES = ("auto", "cpu", "cuda")


class InferenceError(RuntimeError):
    """Inference cannot run as asked (no such device, out of GPU memory, bad input); the message is one line."""


def select_device(spec: str = "auto") -> torch.device:
    """"auto" -> CUDA when available else CPU; "cpu"; "cuda" or "cuda:N" (an error when CUDA is absent)."""
    text = str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        try:
            device = torch.device(text)
        except RuntimeError as exc:
            raise InferenceError(f"bad device {spec!r}: {exc}") from exc
        if not torch.cuda.is_available():
            raise InferenceError(f"device {spec!r} asked for but CUDA is not available here; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InferenceError(f"device {spec!r} does not exist ({torch.cuda.device_count()} CUDA device(s) here)")
        return device
    raise InferenceError(f"unknown device {spec!r} (choose auto, cpu, cuda or cuda:N)")


class BatchRunner:
    """Runs a loaded HTNet over flow pictures in batches on one device; returns float32 probabilities."""

    def __init__(self, loaded: LoadedModel, *, device: str = "auto", batch_size: int = 256) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InferenceError(f"batch size must be a positive integer, got {batch_size!r}")
        self.loaded = loaded
        self.device = select_device(device)
        self.batch_size = batch_size
        # the LoadedModel keeps its CPU model untouched; a GPU run works on its own copy
        model = loaded.model if self.device.type == "cpu" else copy.deepcopy(loaded.model).to(self.device)
        self.model = model.eval()
        self.image_size = loaded.config.image_size
        self.n_aus = loaded.config.num_classes  # every model output: the AUs, then any emotion classes

    @property
    def au_names(self) -> tuple[str, ...]:
        """Output column order."""
        return self.loaded.au_names

    def _check(self, pictures: np.ndarray) -> np.ndarray:
        """Validate the picture stack (N, S, S, 3), uint8 or float in [0, 1]."""
        pictures = np.asarray(pictures)
        s = self.image_size
        if pictures.ndim == 3:
            pictures = pictures[None]
        if pictures.ndim != 4 or pictures.shape[1:] != (s, s, 3):
            raise InferenceError(f"expected flow pictures of shape (N, {s}, {s}, 3), got {pictures.shape}")
        if pictures.dtype != np.uint8 and not np.issubdtype(pictures.dtype, np.floating):
            raise InferenceError(f"flow pictures must be uint8 or float in [0, 1], got dtype {pictures.dtype}")
        return pictures

    def predict(self, pictures: np.ndarray) -> np.ndarray:
        """uint8 RGB (N, 28, 28, 3) flow pictures (or float in [0, 1]) -> float32 (N, n_aus) probabilities."""
        pictures = self._check(pictures)
        n = pictures.shape[0]
        out = np.empty((n, self.n_aus), dtype=np.float32)
        if n == 0:
            return out
        cuda = self.device.type == "cuda"
        bs = self.batch_size
        try:
            with torch.inference_mode():
                pending: list[tuple[int, torch.Tensor]] = []
                for start in range(0, n, bs):
                    chunk = images_to_input(pictures[start : start + bs])
                    m = len(chunk)
                    if m < bs:  # fixed batch shape: the same kernels for every batch (module docstring)
                        chunk = np.concatenate([chunk, np.zeros((bs - m, *chunk.shape[1:]), chunk.dtype)])
                    x = torch.from_numpy(chunk)
                    if cuda:
                        x = x.pin_memory().to(self.device, non_blocking=True)
                    probs = torch.sigmoid(self.model(x).float())[:m]  # the one and only sigmoid
                    if cuda:
                        host = torch.empty(probs.shape, dtype=torch.float32, pin_memory=True)
                        host.copy_(probs, non_blocking=True)
                        pending.append((start, host))
                    else:
                        out[start : start + len(probs)] = probs.numpy()
                if cuda:
                    torch.cuda.synchronize(self.device)
                    for start, host in pending:
                        out[start : start + len(host)] = host.numpy()
        except torch.cuda.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            raise InferenceError(f"out of GPU memory at batch size {bs}: lower --batch-size") from exc
        return out

    __call__ = predict
