"""Training and evaluation: labels, deterministic training, metrics, thresholds inside the training folds, CLI."""

from __future__ import annotations

import ast
import copy
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from au_annotate.flow import encode_flow, save_flow_png
from au_annotate.training.data import DatasetError, build_labels, load_dataset
from au_annotate.training.evaluate import (
    binary_metrics,
    evaluate,
    macro,
    make_folds,
    run_fold,
)
from au_annotate.training.folds import best_f1_threshold, select_thresholds
from au_annotate.training.reliability import RELIABILITY, ReliabilityRule, reliable_aus
from au_annotate.training.train import (
    TrainConfig,
    TrainConfigError,
    flip_pictures,
    load_train_config,
    train_checkpoint,
    train_model,
)

SAMM = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "samm-flow28"
TINY = TrainConfig(epochs=2, batch_size=8, inner_folds=2, model={"dim": 8, "heads": 2, "block_repeats": 1})


def _pictures(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Synthetic flow pictures: AU column j adds motion in its own horizontal band (seed encoding)."""
    rng = np.random.default_rng(seed)
    out = []
    for row in labels:
        flow = rng.normal(0, 0.2, (56, 56, 2)).astype(np.float32)
        for j, v in enumerate(row):
            if v:
                flow[8 * j : 8 * j + 8, :, 1] += 2.0
        out.append(encode_flow(flow))
    return np.stack(out)


def _write_dataset(root: Path, n_subjects: int = 4, per_subject: int = 5, missing: bool = True,
                   codes_in_order: list[str] | None = None) -> Path:
    """A samm-flow28-shaped folder: samm.csv (';', CRLF) + flows/sub{S}_{F}.png; `codes_in_order`: the samples'
    codes one by one (subject by subject) instead of the default cycle."""
    codes = ["4+7", "12", "4", "7B+ref(12)", "(R4 or R12)"]
    rows = ["Subject;Filename;Inducement Code;Onset Frame;Apex Frame;Offset Frame;Duration;Micro;Action Units;"
            "Estimated Emotion;Objective Classes;Notes"]
    (root / "flows").mkdir(parents=True)
    k = 0
    for s in range(n_subjects):
        subj = f"{s + 1:03d}"
        for i in range(per_subject):
            fname = f"{subj}_{i}"
            code = codes_in_order[k] if codes_in_order is not None else codes[(s + i) % len(codes)]
            rows.append(f"{subj};{fname};1;1;2;3;3;Micro - 1/2;{code};Other;1;")
            labels, _ = build_labels([code], ["AU04", "AU07", "AU12"])
            save_flow_png(root / "flows" / f"sub{subj}_{fname}.png", _pictures(labels, seed=k)[0])
            k += 1
    if missing:
        rows.append(f"{n_subjects:03d};{n_subjects:03d}_99;1;1;2;3;3;Micro;4;Other;1;")
    (root / "samm.csv").write_bytes(("\r\n".join(rows) + "\r\n").encode())
    return root


# ------------------------------------------------------------------------------------------------------------ labels


def test_build_labels_rules() -> None:
    labels, names = build_labels(["4+7", "(R6 or R12)+R15", "ref(7B)+43C", "A1B+A2C", "B18+25"])
    assert names == ("AU01", "AU02", "AU04", "AU06", "AU07", "AU12", "AU15", "AU18", "AU25", "AU43")
    col = {n: i for i, n in enumerate(names)}
    assert labels[1, [col["AU06"], col["AU12"], col["AU15"]]].tolist() == [1, 1, 1]  # every option counts
    assert labels[2, [col["AU07"], col["AU43"]]].tolist() == [1, 1]  # ref(..) counts as present
    assert labels[4, [col["AU18"], col["AU25"]]].tolist() == [1, 1]  # prefixed codes are not dropped
    assert labels.sum() == 2 + 3 + 2 + 2 + 2
    first, _ = build_labels(["(R6 or R12)+R15"], ["AU06", "AU12", "AU15"], alternatives="first")
    assert first.tolist() == [[1, 0, 1]]


@pytest.mark.skipif(not SAMM.exists(), reason="SAMM dataset not available")
def test_samm_labels_real_rows() -> None:
    ds = load_dataset(SAMM)
    assert len(ds) == 157
    assert set(ds.missing) == {"sub028_028_4_1.png", "sub032_032_3_1.png"}
    assert ds.identity["n_subjects"] == 29 and ds.identity["n_samples"] == 157
    assert len(ds.au_names) == 27 and {"AU18", "AU23"} <= set(ds.au_names)
    assert ds.labels.sum(1).min() >= 1  # no sample without an AU (the seed left 11)
    row = {n: i for i, n in enumerate(ds.names)}
    col = {n: i for i, n in enumerate(ds.au_names)}
    on = lambda name: {ds.au_names[j] for j in np.flatnonzero(ds.labels[row[name]])}  # noqa: E731
    assert on("sub007_007_6_1.png") == {"AU06", "AU12", "AU15"}
    assert on("sub020_020_1_3.png") == {"AU18", "AU25"}
    assert on("sub026_026_5_1.png") == {"AU14", "AU17"}
    assert on("sub035_035_7_1.png") == {"AU01", "AU02"}
    assert ds.labels[:, col["AU07"]].sum() == 46 and ds.labels[:, col["AU12"]].sum() == 30
    assert ds.images.shape == (157, 28, 28, 3) and ds.images.dtype == np.uint8


def test_load_dataset_reports_missing_and_errors(tmp_path: Path) -> None:
    root = _write_dataset(tmp_path / "d")
    ds = load_dataset(root)
    assert len(ds) == 20 and ds.missing == ("sub004_004_99.png",)
    assert ds.au_names == ("AU04", "AU07", "AU12")
    assert len(ds.identity["files_sha256"]) == 64
    with pytest.raises(DatasetError, match="samm.csv"):
        load_dataset(tmp_path)
    text = (root / "samm.csv").read_text().replace(";4+7;", ";4+X;", 1)
    (root / "samm.csv").write_text(text)
    with pytest.raises(DatasetError, match=r"samm\.csv.*'X'"):
        load_dataset(root)


# ----------------------------------------------------------------------------------------------------------- metrics


def test_binary_metrics_hand_case() -> None:
    m = binary_metrics(np.array([1, 1, 0, 0, 0]), np.array([1, 0, 1, 0, 0]), np.array([0.9, 0.3, 0.8, 0.1, 0.2]))
    assert m["support"] == 2
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5) and m["f1"] == pytest.approx(0.5)
    assert m["uar"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert m["auc"] == pytest.approx(5 / 6)
    allpos = binary_metrics(np.array([1, 0, 0, 0]), np.ones(4), np.ones(4))
    assert allpos["f1"] == pytest.approx(2 * 0.25 / 1.25) and allpos["uar"] == 0.5 and allpos["auc"] == 0.5
    none = binary_metrics(np.zeros(3), np.zeros(3), np.zeros(3))
    assert none["f1"] == 0.0 and math.isnan(none["auc"])


def test_macro_skips_rare_and_nan() -> None:
    rows = [
        {"au": "AU01", "support": 12, "precision": 1.0, "recall": 0.5, "f1": 0.6, "uar": 0.7, "auc": 0.8, "kappa": 0.5},
        {"au": "AU02", "support": 2, "precision": 0.0, "recall": 0.0, "f1": 0.0, "uar": 0.5, "auc": math.nan,
         "kappa": 0.0},
    ]
    assert macro(rows)["f1"] == pytest.approx(0.3) and macro(rows)["auc"] == pytest.approx(0.8)
    assert macro(rows, 10) == {"n_aus": 1, "precision": 1.0, "recall": 0.5, "f1": 0.6, "uar": 0.7, "auc": 0.8,
                               "kappa": 0.5}


def test_cohen_kappa_by_hand() -> None:
    """kappa = (po - pe) / (1 - pe): 40 of 50 agree, 25 and 30 positives -> pe = (25*30 + 25*20) / 2500 = 0.5."""
    from au_annotate.training.evaluate import cohen_kappa

    assert cohen_kappa(tp=20, fp=5, fn=10, tn=15) == pytest.approx((0.7 - 0.5) / 0.5)
    assert cohen_kappa(10, 0, 0, 0) == 0.0 and math.isnan(cohen_kappa(0, 0, 0, 0))
    assert cohen_kappa(5, 0, 0, 5) == 1.0 and cohen_kappa(0, 5, 5, 0) == -1.0


def test_best_f1_threshold() -> None:
    assert best_f1_threshold(np.array([1, 1, 0, 0]), np.array([0.9, 0.8, 0.3, 0.1])) == pytest.approx(0.55)
    assert best_f1_threshold(np.array([1, 0, 1, 0]), np.array([0.9, 0.7, 0.5, 0.1])) == pytest.approx(0.3)  # F1 0.8
    # top-1 and top-4 both give F1 2/3: the tie goes to the higher threshold
    assert best_f1_threshold(np.array([1, 0, 0, 1]), np.array([0.9, 0.8, 0.7, 0.6])) == pytest.approx(0.85)
    assert best_f1_threshold(np.zeros(3), np.array([0.2, 0.9, 0.5])) > 0.9
    thr = select_thresholds(np.array([[1, 0], [0, 0]]), np.array([[0.6, 0.2], [0.4, 0.3]]))
    assert thr[0] == pytest.approx(0.5) and thr[1] == 1.0


def test_reliable_rule() -> None:
    def row(au: str, support: int, f1: float, auc: float = 0.9) -> dict:
        return {"au": au, "support": support, "f1": f1, "auc": auc}

    tables = {
        "htnet": [row("AU04", 20, 0.6), row("AU07", 40, 0.6), row("AU09", 5, 0.9), row("AU05", 10, 0.3),
                  row("AU12", 30, 0.7, auc=0.6), row("AU02", 18, 0.55)],
        "all_positive": [row("AU04", 20, 0.2), row("AU07", 40, 0.45), row("AU09", 5, 0.1), row("AU05", 10, 0.1),
                         row("AU12", 30, 0.3), row("AU02", 18, 0.2)],
        "logreg": [row("AU04", 20, 0.8), row("AU07", 40, 0.3), row("AU09", 5, 0.1), row("AU05", 10, 0.1),
                   row("AU12", 30, 0.1), row("AU02", 18, 0.5)],
    }
    # AU07 is not 2x all-positive, AU09 has too few positives, AU05 F1 0.3 < MIN_F1, AU12 ranks poorly (AUC 0.6);
    # AU04 is usable although the pixel baseline does better (that comparison is reported, not a usability criterion)
    assert reliable_aus(tables) == RELIABILITY.apply(tables) == ["AU04", "AU02"]
    # the text is generated from the thresholds that apply() uses, so another rule describes itself differently
    looser = ReliabilityRule(min_support=5, min_f1=0.3, all_positive_factor=1.0, min_auc=0.5)
    assert looser.apply(tables) == ["AU04", "AU07", "AU09", "AU05", "AU12", "AU02"]
    tables["htnet"][1]["auc"] = None  # metrics.json stores a NaN AUC as null: never reliable
    assert looser.apply(tables) == ["AU04", "AU09", "AU05", "AU12", "AU02"]
    assert looser.describe() == (
        "support >= 5, cross-validated F1 >= 0.3 and >= 1x the all-positive F1, pooled cross-validated ROC-AUC >= 0.5 "
        "(beating logistic regression is not a criterion)"
    )
    for value in ("support >= 10", "F1 >= 0.4", ">= 2x the all-positive F1", "ROC-AUC >= 0.75"):
        assert value in RELIABILITY.describe()
    assert "logistic regression is not a criterion" in RELIABILITY.describe()
    assert RELIABILITY.apply_without_metrics(["AU04", "AU09"], [10, 9]) == ["AU04"]


def _training_imports() -> dict[str, tuple[set[str], set[str]]]:
    """Per module of au_annotate.training: (modules of the package it imports at top level, ... inside functions)."""
    import au_annotate.training as pkg

    prefix = "au_annotate.training."
    out: dict[str, tuple[set[str], set[str]]] = {}
    for path in sorted(Path(pkg.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))

        def targets(nodes: list[ast.AST]) -> set[str]:
            names = set()
            for node in nodes:
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(prefix):
                    names.add(node.module.removeprefix(prefix).split(".")[0])
                elif isinstance(node, ast.Import):
                    names |= {a.name.removeprefix(prefix).split(".")[0] for a in node.names if a.name.startswith(prefix)}
            return names

        top = targets(list(tree.body))  # `if TYPE_CHECKING:` imports are for annotations only and not counted
        inner = targets([n for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
                         for n in ast.walk(f)])
        out[path.stem] = (top, inner)
    return out


def test_training_imports_point_one_way() -> None:
    graph = _training_imports()
    assert {"folds", "reliability", "train", "baselines", "evaluate"} <= set(graph)
    for module, (_, inner) in graph.items():
        assert not inner, f"{module} imports {inner} inside a function (a circle dodged at call time)"
    assert graph["folds"][0] == set() and graph["reliability"][0] == set()
    assert "evaluate" not in graph["train"][0] | graph["baselines"][0]
    assert "train" not in graph["baselines"][0]

    def reaches(start: str, goal: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph.get(start, ((), ()))[0])

    circles = [m for m in graph if reaches(m, m)]
    assert not circles, f"import circle through {circles}"


def test_make_folds() -> None:
    subjects = np.array(["a", "a", "b", "c", "c", "d"])
    loso = make_folds(subjects, "loso")
    assert len(loso) == 4
    assert sorted(np.concatenate([te for _, te in loso]).tolist()) == list(range(6))
    for tr, te in loso:
        assert len(set(subjects[te])) == 1 and not set(subjects[tr]) & set(subjects[te])
    assert len(make_folds(subjects, "group-kfold", 2)) == 2


# ------------------------------------------------------------------------------------------------------ augmentation


def test_flip_mirrors_the_flow_angle() -> None:
    rng = np.random.default_rng(3)
    flow = np.zeros((56, 56, 2), np.float32)
    flow[:, :20] = (1.5, -0.5)  # right-and-up motion on the left side
    flow[30:, 30:] = (-0.3, 1.0)
    flow += rng.normal(0, 0.05, flow.shape).astype(np.float32)
    mirrored = np.ascontiguousarray(flow[:, ::-1]) * np.array([-1.0, 1.0], np.float32)
    got = flip_pictures(encode_flow(flow)[None])[0].astype(int)
    want = encode_flow(mirrored).astype(int)
    naive = encode_flow(flow)[:, ::-1].astype(int)
    assert np.abs(got - want).mean() < 4.0
    assert np.abs(naive - want).mean() > 20.0  # a plain flip gets the colours wrong


# ---------------------------------------------------------------------------------------------------------- training


def test_training_is_deterministic() -> None:
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]] * 3, dtype=np.float32)
    images = _pictures(labels)
    cfg = TrainConfig(**{**TINY.to_dict(), "flip": True, "translate": 1, "pos_weight": "balanced"})
    a = train_model(images, labels, cfg).state_dict()
    b = train_model(images, labels, cfg).state_dict()
    c = train_model(images, labels, cfg, seed=1).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_training_restores_the_callers_thread_count_and_rng() -> None:
    labels = np.array([[1, 0], [0, 1]] * 3, dtype=np.float32)
    images = _pictures(labels)
    before = torch.get_num_threads()
    distinctive = 3 if before != 3 else 5  # not 1 (what training sets) and not the default
    torch.set_num_threads(distinctive)
    try:
        torch.manual_seed(1234)
        expected = torch.rand(3)
        torch.manual_seed(1234)
        train_model(images, labels, TINY)
        assert torch.get_num_threads() == distinctive
        assert torch.equal(torch.rand(3), expected)  # the caller's random stream is untouched
    finally:
        torch.set_num_threads(before)


def test_thresholds_never_see_the_held_out_fold() -> None:
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0]] * 4, dtype=np.float32)
    images = _pictures(labels)
    subjects = np.repeat(np.array(["s1", "s2", "s3", "s4"]), 5)
    train_idx, test_idx = np.arange(15), np.arange(15, 20)
    a = run_fold(0, images, labels, subjects, train_idx, test_idx, TINY)
    changed = labels.copy()
    changed[test_idx] = 1 - changed[test_idx]  # the held-out labels must not matter for anything fitted
    b = run_fold(0, images, changed, subjects, train_idx, test_idx, TINY)
    for method in ("htnet", "logreg"):
        np.testing.assert_array_equal(a.thresholds[method], b.thresholds[method])
        np.testing.assert_array_equal(a.scores[method], b.scores[method])


def test_evaluate_and_checkpoint_round_trip(tmp_path: Path) -> None:
    from au_annotate.weights import load_checkpoint

    ds = load_dataset(_write_dataset(tmp_path / "d"))
    report = evaluate(ds, TINY, "group-kfold", 2)
    p = ds.labels.mean(0)
    allpos = [r["f1"] for r in report.tables["all_positive"]]
    np.testing.assert_allclose(allpos, 2 * p / (1 + p))
    paths = report.write(tmp_path / "ev")
    js = json.loads(paths[1].read_text())
    assert js["protocol"] == "group-kfold-2" and js["recipe"] == TINY.to_dict()
    assert paths[0].read_text().splitlines()[0] == "method,au,support,precision,recall,f1,uar,auc,kappa"
    assert len(paths[2].read_text().splitlines()) == len(ds) + 1

    assert js["reliable_rule"] == RELIABILITY.describe()

    sha, fit, reliable = train_checkpoint(ds, TINY, tmp_path / "m.pt", eval_report=js)
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.sha256 == sha and loaded.au_names == ds.au_names
    np.testing.assert_allclose(loaded.thresholds, fit.thresholds, rtol=1e-6)
    assert loaded.reliable.tolist() == reliable == [au in js["reliable"] for au in ds.au_names]
    assert loaded.meta["training"]["data"]["files_sha256"] == ds.identity["files_sha256"]
    assert loaded.meta["metrics"]["protocol"] == "group-kfold-2"
    assert loaded.meta["training"]["reliable_rule"] == RELIABILITY.describe()
    assert "as_reported" not in loaded.meta["metrics"]  # a current report agrees with the checkpoint

    # A report whose tables make AU04 reliable but whose own list (an older rule's) says AU12: the checkpoint takes the
    # rule's choice, states the rule it applied, and its stored metrics agree with its mask.
    doctored = copy.deepcopy(js)
    col = ds.au_names.index("AU04")
    doctored["tables"]["htnet"][col].update(f1=0.9, auc=0.95)
    doctored["tables"]["all_positive"][col]["f1"] = 0.3
    doctored["reliable"] = ["AU12"]
    _, _, reliable = train_checkpoint(ds, TINY, tmp_path / "m2.pt", eval_report=doctored)
    loaded = load_checkpoint(tmp_path / "m2.pt")
    stored = loaded.meta["metrics"]
    mask = [au for au, r in zip(loaded.au_names, loaded.reliable, strict=True) if r]
    assert mask == ["AU04"] == [au for au, r in zip(ds.au_names, reliable, strict=True) if r]
    assert loaded.meta["training"]["reliable_rule"] == stored["reliable_rule"] == RELIABILITY.describe()
    assert RELIABILITY.apply(stored["tables"]) == stored["reliable"] == mask
    assert stored["as_reported"] == {"reliable": ["AU12"], "reliable_rule": RELIABILITY.describe()}

    # Without a report only the support condition is applied, and the stored text says exactly that.
    _, _, reliable = train_checkpoint(ds, TINY, tmp_path / "m3.pt")
    loaded = load_checkpoint(tmp_path / "m3.pt")
    assert loaded.meta["metrics"] is None
    assert loaded.meta["training"]["reliable_rule"] == RELIABILITY.describe_without_metrics()
    positives = ds.labels.sum(0)
    assert [au for au, r in zip(ds.au_names, reliable, strict=True) if r] == RELIABILITY.apply_without_metrics(
        ds.au_names, positives) == [au for au, n in zip(ds.au_names, positives, strict=True) if n >= 10]
    other = TrainConfig(**{**TINY.to_dict(), "epochs": 3})
    with pytest.raises(TrainConfigError, match="another recipe"):
        train_checkpoint(ds, other, tmp_path / "x.pt", eval_report=js)
    assert not (tmp_path / "x.pt").exists()


def test_a_blended_checkpoint_gives_what_training_measured(tmp_path: Path) -> None:
    """blend_logreg 0.5: the thresholds come from the mean of HTNet's and the pixel regression's inner out-of-fold
    probabilities; the checkpoint (model.PixelBlend, format 2) gives through the product's batch runner what
    FittedHTNet.predict_proba gives, and that is the mean of the two models' probabilities."""
    from au_annotate.infer import BatchRunner
    from au_annotate.training.train import ensemble_proba
    from au_annotate.weights import load_checkpoint

    ds = load_dataset(_write_dataset(tmp_path / "d"))
    k = len(ds.au_names)
    _, alone, _ = train_checkpoint(ds, TINY, tmp_path / "a.pt")
    blend_cfg = TrainConfig(**{**TINY.to_dict(), "blend_logreg": 0.5})
    _, fit, _ = train_checkpoint(ds, blend_cfg, tmp_path / "b.pt")
    assert fit.logreg is not None and fit.logreg.oof is not None
    expected_oof = 0.5 * alone.oof[:, :k] + 0.5 * fit.logreg.oof
    np.testing.assert_allclose(fit.oof[:, :k], expected_oof, atol=1e-6)
    np.testing.assert_allclose(fit.thresholds, select_thresholds(ds.labels, expected_oof))
    raw = torch.load(tmp_path / "b.pt", weights_only=True)
    assert raw["format_version"] == 2 and raw["pixel_blend"] == {"aus": k, "weight": 0.5}
    assert TrainConfig.from_dict(load_checkpoint(tmp_path / "b.pt").meta["training"]["recipe"]) == blend_cfg
    got = BatchRunner(load_checkpoint(tmp_path / "b.pt"), device="cpu", batch_size=8).predict(ds.images)
    np.testing.assert_allclose(got, fit.predict_proba(ds.images), atol=1e-5)
    both = 0.5 * ensemble_proba(fit.models, ds.images)[:, :k] + 0.5 * fit.logreg.predict_proba(ds.images)
    np.testing.assert_allclose(got[:, :k], both, atol=1e-5)
    assert np.abs(got[:, :k] - ensemble_proba(fit.models, ds.images)[:, :k]).max() > 1e-3  # the blend does something
    assert "blend_logreg" not in TINY.to_dict()  # recipes written before the option still compare equal


def test_a_threshold_is_calibrated_from_ten_training_positives(tmp_path: Path) -> None:
    """docs/au-model.md: `_c` (a usable threshold) only for AUs with >= 10 training positives (CALIBRATED_MIN)."""
    from au_annotate.training.reliability import CALIBRATED_MIN
    from au_annotate.weights import load_checkpoint

    assert CALIBRATED_MIN == 10
    codes = ["4"] * 10 + ["12"] * 9 + ["7"]
    ds = load_dataset(_write_dataset(tmp_path / "d", missing=False, codes_in_order=codes))
    assert dict(zip(ds.au_names, ds.labels.sum(0).astype(int).tolist(), strict=True)) == {"AU04": 10, "AU07": 1,
                                                                                           "AU12": 9}
    train_checkpoint(ds, TINY, tmp_path / "m.pt")
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert dict(zip(loaded.au_names, np.asarray(loaded.calibrated).tolist(), strict=True)) == {
        "AU04": True, "AU07": False, "AU12": False}


def test_train_config_file(tmp_path: Path) -> None:
    cfg_path = tmp_path / "r.toml"
    cfg_path.write_text('epochs = 5\nflip = true\npos_weight = "balanced"\n[model]\ndim = 32\nblock_repeats = 1\n')
    cfg = load_train_config(cfg_path)
    assert cfg.epochs == 5 and cfg.flip and cfg.model == {"dim": 32, "block_repeats": 1}
    assert cfg.model_config(27).num_classes == 27 and cfg.model_config(27).dim == 32
    cfg_path.write_text("epoch = 5\n")
    with pytest.raises(TrainConfigError, match=r"r\.toml.*epoch"):
        load_train_config(cfg_path)
    with pytest.raises(TrainConfigError, match="pos_weight"):
        TrainConfig(pos_weight="sometimes")
    with pytest.raises(TrainConfigError, match="dim"):
        TrainConfig(model={"dim": 30, "heads": 4})
    with pytest.raises(TrainConfigError, match=r"unknown model option\(s\): depth \(known: block_repeats, dim"):
        TrainConfig(model={"depth": 2})
    with pytest.raises(TrainConfigError, match=r"unknown training option\(s\): epoch, lrate \(known: batch_size"):
        TrainConfig.from_dict({"epoch": 2, "lrate": 0.1})


def test_cli_train_and_evaluate(tmp_path: Path) -> None:
    from au_annotate.cli import main

    data = _write_dataset(tmp_path / "d")
    opts = ["--epochs", "1", "--dim", "8", "--heads", "2", "--depth", "1", "--inner-folds", "2"]
    runner = CliRunner()
    res = runner.invoke(main, ["evaluate", "--data", str(data), "--protocol", "group-kfold", "--folds", "2",
                               "-o", str(tmp_path / "ev"), *opts])
    assert res.exit_code == 0, res.output
    assert "sub004_004_99.png" in res.output and "macro" in res.output
    res = runner.invoke(main, ["train", "--data", str(data), "-o", str(tmp_path / "w.pt"),
                               "--eval-report", str(tmp_path / "ev" / "metrics.json"), *opts])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "w.pt").stat().st_size > 0
    res = runner.invoke(main, ["evaluate", "--data", str(tmp_path / "nope")])
    assert res.exit_code == 1 and "nope" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, ["train", "--data", str(data), "-o", str(tmp_path / "w2.pt"), "--epochs", "2",
                               "--eval-report", str(tmp_path / "ev" / "metrics.json"), *opts[2:]])
    assert res.exit_code == 1 and "another recipe" in res.output


SHIPPED = Path(__file__).resolve().parents[1] / "weights" / "htnet-samm.pt"


@pytest.mark.skipif(not SHIPPED.exists(), reason="shipped checkpoint not built")
def test_shipped_checkpoint_matches_its_model_card() -> None:
    from au_annotate.weights import load_checkpoint

    loaded = load_checkpoint(SHIPPED)
    assert loaded.n_aus == 27 and loaded.au_names[:3] == ("AU01", "AU02", "AU04")
    meta = loaded.meta
    recipe = TrainConfig.from_dict(meta["training"]["recipe"])
    assert recipe.model_config(27) == loaded.config
    report = meta["metrics"]
    assert report["protocol"] == "loso" and report["n_folds"] == 29
    assert report["recipe"] == recipe.to_dict()  # the LOSO numbers belong to this recipe
    assert report["data"]["files_sha256"] == meta["training"]["data"]["files_sha256"]
    chosen = [loaded.au_names[i] for i in np.flatnonzero(loaded.reliable)]
    assert chosen == RELIABILITY.apply(report["tables"]) == report["reliable"] == ["AU02", "AU04"]
    assert meta["training"]["reliable_rule"] == report["reliable_rule"] == RELIABILITY.describe()
    assert np.all((loaded.thresholds > 0) & (loaded.thresholds < 1))
    card = (SHIPPED.parent / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert loaded.sha256 in card
    rows: dict[str, str] = {}
    for line in card.splitlines():  # the first table with AU rows is the LOSO table
        if line.startswith("| AU"):
            rows.setdefault(line.split("|")[1].strip(), line)
    for r in report["tables"]["htnet"]:  # the card's LOSO table is the checkpoint's report
        assert rows[r["au"]].startswith(f"| {r['au']} | {r['support']} |") and f"**{r['f1']:.2f}**" in rows[r["au"]]
    # one statement of which AUs are reliable, and why: the table's column, the bold line and the rule's own text
    assert [au for au, line in rows.items() if line.split("|")[-2].strip() == "yes"] == chosen
    flat = " ".join(card.split())
    statements = re.findall(r"\*\*Reliable: (.*?)\*\*", flat)
    assert len(statements) == 1 and re.findall(r"AU\d\d", statements[0]) == chosen
    assert RELIABILITY.describe() in flat


def test_cli_help_defaults_match_the_recipe_defaults() -> None:
    from au_annotate.cli.train import HELP_DEFAULTS

    defaults = TrainConfig()
    assert {"epochs": defaults.epochs, "lr": defaults.lr, "seed": defaults.seed} == HELP_DEFAULTS
