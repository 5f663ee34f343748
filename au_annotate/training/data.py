"""Flow-picture datasets: SAMM's ``samm.csv`` + ``flows/*.png`` (seed encoding), or the MEGC2019 composite's
``index.csv`` + ``flows/*.png`` (HTNet encoding; SAMM, CASME II, SMIC; AU labels from the raw FACS strings of CASME II and
SAMM, the 3-class emotion for all). ``load_any`` tells them apart by the table's name.

Label rule: an AU is positive for a sample when its code contains it at any intensity and on any side, including
``ref(..)`` codes (present, referenced). For uncertain codes ``X or Y`` every option counts as present (rule ``all``;
``first`` and ``none`` are available). The label space is every AU that occurs in the table (27 for SAMM), in ascending
AU number, unless an explicit list of AU names is given.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from au_annotate.facs import FACSParseError, au_name, au_number, parse
from au_annotate.fileio import sha256_file
from au_annotate.flow import HTNET_ENCODING, SEED_ENCODING, load_flow_png

CSV_NAME = "samm.csv"
FLOW_DIR = "flows"
REQUIRED_COLUMNS = ("Subject", "Filename", "Action Units")


class DatasetError(ValueError):
    """The training data folder is missing a file or holds something unreadable (message names the file)."""


@dataclass(frozen=True)
class MetaRow:
    """One row of the metadata table that matters for training."""

    subject: str
    filename: str
    action_units: str

    @property
    def image_name(self) -> str:
        """Flow picture file name: ``sub{Subject}_{Filename}.png``."""
        return f"sub{self.subject}_{self.filename}.png"


@dataclass(frozen=True)
class AUDataset:
    """Flow pictures with multi-hot AU labels and subject ids (one row per sample with an image)."""

    images: np.ndarray  # uint8 (N, 28, 28, 3) RGB
    labels: np.ndarray  # float32 (N, K) 0/1
    subjects: np.ndarray  # str (N,)
    names: tuple[str, ...]  # image file names
    codes: tuple[str, ...]  # the raw FACS strings
    au_names: tuple[str, ...]  # "AU04", ... in label column order
    missing: tuple[str, ...] = ()  # table rows without a flow picture (image names)
    identity: dict = field(default_factory=dict)  # see data_identity()
    sources: np.ndarray | None = None  # str (N,): source dataset per sample (samm, casme2, smic); None = one dataset
    emotions: np.ndarray | None = None  # int (N,): index into emotion_classes, -1 unknown; None = no emotion labels
    au_known: np.ndarray | None = None  # bool (N,): the sample has AU labels (SMIC has none); None = all have
    emotion_classes: tuple[str, ...] = ()
    encoding: str = SEED_ENCODING  # the flow-picture encoding of `images` (au_annotate.flow.ENCODINGS)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def au_mask(self) -> np.ndarray:
        """bool (N,): which samples carry AU labels."""
        return np.ones(len(self), bool) if self.au_known is None else self.au_known

    @property
    def source_names(self) -> np.ndarray:
        """str (N,): the source dataset of each sample (the folder name when the data has one source)."""
        return np.full(len(self), self.identity.get("name", "data")) if self.sources is None else self.sources

    def subset(self, idx: np.ndarray) -> AUDataset:
        """The samples at `idx` (labels, images and ids kept aligned)."""
        idx = np.asarray(idx)

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[idx]

        return AUDataset(
            self.images[idx], self.labels[idx], self.subjects[idx], tuple(self.names[i] for i in idx),
            tuple(self.codes[i] for i in idx), self.au_names, (), {}, pick(self.sources), pick(self.emotions),
            pick(self.au_known), self.emotion_classes, self.encoding,
        )



def _flow_picture(path: Path) -> np.ndarray:
    """One dataset picture, checked to be a 28x28 RGB flow picture (DatasetError naming the file otherwise)."""
    try:
        img = load_flow_png(path)
    except ValueError as exc:
        raise DatasetError(str(exc)) from exc
    if img.shape != (28, 28, 3):
        raise DatasetError(f"{path}: expected a 28x28 RGB flow picture, got {img.shape}")
    return img

def read_table(csv_path: str | Path) -> list[MetaRow]:
    """Read SAMM's ``;``-separated metadata table (CRLF, optional BOM)."""
    path = Path(csv_path)
    if not path.is_file():
        raise DatasetError(f"{path}: metadata table not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, delimiter=";")
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(f"{path}: missing column(s) {', '.join(missing)} (is it ';'-separated?)")
            rows = [
                MetaRow(r["Subject"].strip(), r["Filename"].strip(), (r["Action Units"] or "").strip())
                for r in reader
                if (r.get("Filename") or "").strip()
            ]
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    if not rows:
        raise DatasetError(f"{path}: no rows")
    return rows


def build_labels(codes: Sequence[str], au_names: Sequence[str] | None = None, alternatives: str = "all") -> tuple[
    np.ndarray, tuple[str, ...]
]:
    """Multi-hot float32 (N, K) labels from FACS strings, and the AU names of the columns.

    au_names=None: every AU occurring in `codes`, ascending. AUs outside an explicit list are ignored."""
    sets = [parse(c).aus(alternatives) for c in codes]
    if au_names is None:
        au_names = tuple(au_name(a) for a in sorted(set().union(*sets)))
    numbers = [au_number(n) for n in au_names]
    labels = np.zeros((len(codes), len(numbers)), dtype=np.float32)
    for i, s in enumerate(sets):
        for j, a in enumerate(numbers):
            labels[i, j] = float(a in s)
    return labels, tuple(au_names)


def data_identity(csv_path: Path, image_paths: Sequence[Path], subjects: Sequence[str]) -> dict:
    """What identifies the training data: a hash over the table and every image (names + bytes), counts, subjects."""
    h = hashlib.sha256()
    h.update(f"{csv_path.name}:{sha256_file(csv_path)}\n".encode())
    for p in sorted(image_paths, key=lambda p: p.name):
        h.update(f"{p.name}:{sha256_file(p)}\n".encode())
    return {
        "name": csv_path.parent.name,
        "files_sha256": h.hexdigest(),
        "n_samples": len(image_paths),
        "subjects": sorted(set(subjects)),
        "n_subjects": len(set(subjects)),
    }


def load_dataset(data_dir: str | Path, au_names: Sequence[str] | None = None, alternatives: str = "all") -> AUDataset:
    """Load ``DIR/samm.csv`` + ``DIR/flows/*.png``; rows without a picture are listed in ``missing``, not fatal."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetError(f"{root}: data folder not found")
    csv_path = root / CSV_NAME
    rows = read_table(csv_path)
    flow_dir = root / FLOW_DIR
    if not flow_dir.is_dir():
        raise DatasetError(f"{flow_dir}: flow picture folder not found")
    kept: list[MetaRow] = []
    missing: list[str] = []
    images: list[np.ndarray] = []
    paths: list[Path] = []
    for row in rows:
        try:
            parse(row.action_units)
        except FACSParseError as exc:
            raise DatasetError(f"{csv_path}: row {row.filename}: {exc}") from exc
        p = flow_dir / row.image_name
        if not p.is_file():
            missing.append(row.image_name)
            continue
        img = _flow_picture(p)
        kept.append(row)
        images.append(img)
        paths.append(p)
    if not kept:
        raise DatasetError(f"{flow_dir}: no flow picture matches a row of {csv_path.name}")
    labels, names = build_labels([r.action_units for r in kept], au_names, alternatives)
    subjects = [r.subject for r in kept]
    return AUDataset(
        images=np.stack(images),
        labels=labels,
        subjects=np.asarray(subjects),
        names=tuple(r.image_name for r in kept),
        codes=tuple(r.action_units for r in kept),
        au_names=names,
        missing=tuple(missing),
        identity=data_identity(csv_path, paths, subjects),
    )


# ------------------------------------------------------------------------------------------- MEGC2019 composite

INDEX_NAME = "index.csv"
EMOTION_CLASSES = ("negative", "positive", "surprise")  # HTNet's 3 classes, in the composite's label order
INDEX_COLUMNS = ("sample_id", "dataset", "subject", "class3", "flow", "action_units")
AU_SOURCES = ("samm", "casme2")  # the composite's datasets coded with FACS (SMIC has emotion labels only)


def _check_code(code: str, where: str) -> None:
    """A FACS string must parse and name only real AU numbers (1..99); DatasetError naming the row otherwise."""
    try:
        aus = parse(code).aus("all")
    except FACSParseError as exc:
        raise DatasetError(f"{where}: {exc}") from exc
    bad = sorted(a for a in aus if not 0 < a < 100)
    if bad:
        raise DatasetError(f"{where}: unknown AU code {bad[0]} in {code!r}")


def load_composite(
    data_dir: str | Path, au_names: Sequence[str] | None = None, sources: Sequence[str] | None = None,
    alternatives: str = "all",
) -> AUDataset:
    """Load ``DIR/index.csv`` + its flow pictures (HTNet encoding); a missing picture or a bad row is a DatasetError.

    The label space is every AU of the CASME II and SAMM codes (or `au_names`); SMIC rows have ``au_known`` False.
    sources: keep only these datasets (e.g. ``("samm", "casme2")``)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetError(f"{root}: data folder not found")
    index = root / INDEX_NAME
    if not index.is_file():
        raise DatasetError(f"{index}: index table not found")
    try:
        with open(index, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            absent = [c for c in INDEX_COLUMNS if c not in (reader.fieldnames or [])]
            if absent:
                raise DatasetError(f"{index}: missing column(s) {', '.join(absent)}")
            rows = [r for r in reader if (r.get("sample_id") or "").strip()]
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{index}: not UTF-8 text ({exc.reason})") from exc
    if sources is not None:
        rows = [r for r in rows if r["dataset"] in sources]
    if not rows:
        raise DatasetError(f"{index}: no rows" + (f" of {', '.join(sources)}" if sources else ""))
    images, paths = [], []
    for r in rows:  # check everything before building anything: one clear line, nothing half-loaded
        where = f"{index}: row {r['sample_id']}"
        if r["class3"] not in EMOTION_CLASSES:
            raise DatasetError(f"{where}: unknown class3 {r['class3']!r} (known: {', '.join(EMOTION_CLASSES)})")
        has_aus = r["dataset"] in AU_SOURCES
        if has_aus:
            _check_code(r["action_units"] or "", where)
        p = root / r["flow"]
        if not p.is_file():
            raise DatasetError(f"{where}: flow picture {r['flow']} is missing")
        img = _flow_picture(p)
        images.append(img)
        paths.append(p)
    known = np.array([r["dataset"] in AU_SOURCES for r in rows])
    coded = [r["action_units"] or "" for r, k in zip(rows, known, strict=True) if k]
    if au_names is None:
        _, au_names = build_labels(coded, None, alternatives)
    labels = np.zeros((len(rows), len(au_names)), np.float32)
    if coded:
        labels[known] = build_labels(coded, au_names, alternatives)[0]
    subjects = [r["subject"] for r in rows]
    identity = data_identity(index, paths, subjects)
    identity["sources"] = {s: int(sum(r["dataset"] == s for r in rows)) for s in sorted({r["dataset"] for r in rows})}
    return AUDataset(
        images=np.stack(images), labels=labels, subjects=np.asarray(subjects),
        names=tuple(r["sample_id"] for r in rows), codes=tuple(r["action_units"] or "" for r in rows),
        au_names=tuple(au_names), identity=identity, sources=np.asarray([r["dataset"] for r in rows]),
        emotions=np.asarray([EMOTION_CLASSES.index(r["class3"]) for r in rows]), au_known=known,
        emotion_classes=EMOTION_CLASSES, encoding=HTNET_ENCODING,
    )


def load_any(data_dir: str | Path, sources: Sequence[str] | None = None) -> AUDataset:
    """The composite when the folder has ``index.csv``, else SAMM's ``samm.csv`` layout (seed encoding)."""
    root = Path(data_dir)
    if (root / INDEX_NAME).is_file():
        return load_composite(root, sources=sources)
    return load_dataset(root)
