"""Dense face landmarks: MediaPipe FaceLandmarker's 478-point mesh on the aligned face crop, offline.

The model is the landmark network of Google's FaceLandmarker bundle (`face_landmarker.task`, Apache-2.0, shipped in
`weights/` and pinned by sha256; provenance and licence in `weights/FACE_LANDMARKER.md`). Two runtimes give the same
outputs (to 3e-4 px): Google's LiteRT (`ai-edge-litert`, installed on Linux: ~5 ms a call on one core) and OpenCV's own
DNN module (`cv2.dnn.readNetFromTFLite`, OpenCV >= 4.8: ~9 ms), the fallback wherever LiteRT is not installed; nothing
downloads. Input: the pipeline's aligned crop (the face box times 1.15, as `face.py` cuts it), resized to 256x256,
values in [0, 1] (a gray crop is given as three equal channels); output: 478 points (x, y in crop pixels, z relative
depth in the same scale) and a face-presence probability. The spotter calls it only on frames around its candidate
windows (`facestate.py`), never on every frame.

Point indices used by the face state (MediaPipe's canonical mesh numbering) are named in `POINTS`.
"""

from __future__ import annotations

import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from au_annotate.fileio import sha256_file, shipped_dirs
from au_annotate.native import NativeStderr

MODEL_FILE = "face_landmarker.task"
MODEL_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
MEMBER = "face_landmarks_detector.tflite"  # the landmark network inside the bundle (detector and blendshapes unused)
INPUT_SIZE = 256
N_POINTS = 478
MIN_PRESENCE = 0.5  # below this face-presence probability the mesh is not trusted (profile, occlusion, no face)

# MediaPipe canonical mesh indices (subject's left = image right for a frontal face)
POINTS = {
    "eye_r_outer": 33, "eye_r_inner": 133, "eye_l_inner": 362, "eye_l_outer": 263,  # subject's right eye first
    "lid_r_upper": 159, "lid_r_lower": 145, "lid_l_upper": 386, "lid_l_lower": 374,
    "lid_r_upper2": 158, "lid_r_lower2": 153, "lid_l_upper2": 385, "lid_l_lower2": 380,
    "lid_r_upper3": 160, "lid_r_lower3": 144, "lid_l_upper3": 387, "lid_l_lower3": 373,
    "lip_upper_inner": 13, "lip_lower_inner": 14, "mouth_r": 61, "mouth_l": 291,
    "nose_tip": 1, "nose_bridge": 168, "nose_bridge2": 6, "forehead": 10, "chin": 152,
    "brow_r_inner": 55, "brow_r_outer": 46, "brow_l_inner": 285, "brow_l_outer": 276,
}
# points that do not move with facial expressions (eye corners, nose bridge, forehead): the head's rigid pose
STABLE = (33, 133, 362, 263, 168, 6, 10, 1)


class LandmarkError(RuntimeError):
    """The landmark model file is missing, damaged or not the pinned one."""


@dataclass(frozen=True, eq=False)
class Mesh:
    """One crop's landmarks: (478, 3) float32, x and y in crop pixels, z relative depth (same scale); presence in 0..1."""

    points: np.ndarray
    presence: float

    @property
    def ok(self) -> bool:
        """Whether the model says a face is there (presence >= MIN_PRESENCE)."""
        return self.presence >= MIN_PRESENCE


def model_path() -> Path:
    """The bundle's file: the installed wheel's `_weights/`, else the source checkout's `weights/`."""
    folders = shipped_dirs()
    for folder in folders:
        if (folder / MODEL_FILE).is_file():
            return folder / MODEL_FILE
    raise LandmarkError(f"{MODEL_FILE} not found in {' or '.join(map(str, folders))} "
                        "(it ships with au-annotate: reinstall the package)")


_NET_BYTES: dict[str, np.ndarray] = {}
_LOCK = threading.Lock()


def _model_bytes(path: Path) -> np.ndarray:
    """The landmark network's bytes from the bundle, checked against the pinned sha256 once per process."""
    key = str(path)
    with _LOCK:
        if key not in _NET_BYTES:
            digest = sha256_file(path)
            if digest != MODEL_SHA256:
                raise LandmarkError(f"{path}: checksum mismatch (got {digest[:12]}..., expected {MODEL_SHA256[:12]}...)")
            try:
                with zipfile.ZipFile(path) as z:
                    _NET_BYTES[key] = np.frombuffer(z.read(MEMBER), np.uint8)
            except (zipfile.BadZipFile, KeyError) as e:
                raise LandmarkError(f"{path}: not a FaceLandmarker bundle ({e})") from None
        return _NET_BYTES[key]


BACKENDS = ("auto", "litert", "opencv")


def _litert_interpreter(model: np.ndarray):  # noqa: ANN202 - ai_edge_litert's Interpreter, or None
    """A one-thread LiteRT interpreter of the network, or None where `ai-edge-litert` is not installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return None
    with NativeStderr().capture():  # LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate" on every load
        it = Interpreter(model_content=model.tobytes(), num_threads=1)
        it.allocate_tensors()
    return it


class FaceMesh:
    """The 478-point landmark model on aligned face crops. Not thread-safe: one instance per thread (a spotter owns one).

    `backend`: "auto" (LiteRT where installed, else OpenCV), "litert" (raises LandmarkError without it) or "opencv"."""

    def __init__(self, path: str | Path | None = None, backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.path = Path(path) if path is not None else model_path()
        model = _model_bytes(self.path)
        self._lite = _litert_interpreter(model) if backend in ("auto", "litert") else None
        if backend == "litert" and self._lite is None:
            raise LandmarkError("the LiteRT runtime is not installed (pip install ai-edge-litert)")
        if self._lite is not None:
            self.backend = "litert"
            self._in = self._lite.get_input_details()[0]["index"]
            outs = {d["name"]: d["index"] for d in self._lite.get_output_details()}
            self._out = (outs["Identity"], outs["Identity_1"])
        else:
            self.backend = "opencv"
            self._net = cv2.dnn.readNetFromTFLite(model)
            self._outputs = self._net.getUnconnectedOutLayersNames()
        self.calls = 0

    def __call__(self, crop: np.ndarray) -> Mesh:
        """Landmarks of the face filling `crop` (uint8, gray HxW or RGB HxWx3, square: the pipeline's aligned crop)."""
        if crop.ndim != 2 and not (crop.ndim == 3 and crop.shape[2] == 3):
            raise ValueError(f"crop must be HxW or HxWx3, got shape {crop.shape}")
        h, w = crop.shape[:2]
        img = cv2.resize(crop, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA if h > INPUT_SIZE else cv2.INTER_LINEAR)
        x = img.astype(np.float32) * np.float32(1 / 255)
        if self._lite is not None:  # NHWC
            blob = np.repeat(x[None, :, :, None], 3, axis=3) if x.ndim == 2 else np.ascontiguousarray(x[None])
            self._lite.set_tensor(self._in, blob)
            self._lite.invoke()
            raw, logit = self._lite.get_tensor(self._out[0]), self._lite.get_tensor(self._out[1])
        else:  # NCHW
            blob = np.repeat(x[None, None], 3, axis=1) if x.ndim == 2 else np.ascontiguousarray(x.transpose(2, 0, 1)[None])
            self._net.setInput(blob)
            raw, logit, _ = self._net.forward(self._outputs)
        self.calls += 1
        pts = raw.reshape(N_POINTS, 3).astype(np.float32)
        pts[:, 0] *= w / INPUT_SIZE
        pts[:, 1] *= h / INPUT_SIZE
        pts[:, 2] *= w / INPUT_SIZE
        presence = float(1.0 / (1.0 + np.exp(-np.clip(float(np.ravel(logit)[0]), -50, 50))))
        return Mesh(points=pts, presence=presence)
