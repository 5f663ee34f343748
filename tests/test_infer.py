"""Batch runner (sigmoid once, batching invariance, devices, errors) and the `predict` / `weights` commands."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from au_annotate.cli import main
from au_annotate.flow import save_flow_png
from au_annotate.infer import BatchRunner, InferenceError, select_device
from au_annotate.model import HTNet, HTNetConfig
from au_annotate.weights import SEED25_AU_ORDER, LoadedModel, load_checkpoint, save_checkpoint


def _pictures(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28, 3), dtype=np.uint8)


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(7)
    model = HTNet()
    with torch.no_grad():  # make the logits spread out so thresholds and sigmoid-vs-double-sigmoid differ clearly
        model.mlp_head[2].weight.mul_(20)
    thresholds = np.full(25, 0.5, np.float32)
    reliable = np.zeros(25, bool)
    reliable[:5] = True
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, config=model.config, au_names=SEED25_AU_ORDER, thresholds=thresholds,
                    reliable=reliable)
    return path


@pytest.fixture()
def loaded(checkpoint: Path) -> LoadedModel:
    return load_checkpoint(checkpoint)


def test_select_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert select_device("cpu") == torch.device("cpu")
    with pytest.raises(InferenceError, match="unknown device 'tpu'"):
        select_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu")
    with pytest.raises(InferenceError, match="CUDA is not available"):
        select_device("cuda")


def test_sigmoid_applied_exactly_once(loaded: LoadedModel) -> None:
    pics = _pictures(9)
    probs = BatchRunner(loaded, device="cpu").predict(pics)
    x = torch.from_numpy(pics.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    with torch.inference_mode():
        logits = loaded.model(x)
    expected = torch.sigmoid(logits).numpy()
    assert probs.dtype == np.float32 and probs.shape == (9, 25)
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    twice = torch.sigmoid(torch.sigmoid(logits)).numpy()
    assert np.abs(probs - twice).max() > 0.1
    assert probs.min() < 0.5 < probs.max()  # a double sigmoid could never go below 0.5


def test_batches_equal_single_items(loaded: LoadedModel) -> None:
    pics = _pictures(10, seed=1)
    per_item = np.concatenate([BatchRunner(loaded, device="cpu", batch_size=1).predict(p[None]) for p in pics])
    for bs in (1, 3, 10, 64):
        np.testing.assert_allclose(BatchRunner(loaded, device="cpu", batch_size=bs).predict(pics), per_item, atol=1e-5)


def test_float_input_and_empty_and_single_picture(loaded: LoadedModel) -> None:
    runner = BatchRunner(loaded, device="cpu", batch_size=4)
    pics = _pictures(5, seed=2)
    np.testing.assert_allclose(runner.predict(pics.astype(np.float32) / 255.0), runner.predict(pics), atol=1e-6)
    empty = runner.predict(np.zeros((0, 28, 28, 3), np.uint8))
    assert empty.shape == (0, 25) and empty.dtype == np.float32
    assert runner.predict(pics[0]).shape == (1, 25)


def test_bad_input_and_settings(loaded: LoadedModel) -> None:
    runner = BatchRunner(loaded, device="cpu")
    with pytest.raises(InferenceError, match=r"shape \(N, 28, 28, 3\)"):
        runner.predict(np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(InferenceError, match="uint8 or float"):
        runner.predict(np.zeros((2, 28, 28, 3), np.int64))
    with pytest.raises(InferenceError, match="batch size"):
        BatchRunner(loaded, batch_size=0)


def test_cpu_runner_does_not_touch_thread_settings(loaded: LoadedModel) -> None:
    before = torch.get_num_threads()
    BatchRunner(loaded, device="cpu").predict(_pictures(3))
    assert torch.get_num_threads() == before


def test_ensemble_checkpoint_gives_mean_probability(tmp_path: Path) -> None:
    members = []
    for k in range(2):
        torch.manual_seed(20 + k)
        members.append(HTNet().eval())
    path = tmp_path / "ens.pt"
    save_checkpoint(path, members, config=members[0].config, au_names=SEED25_AU_ORDER)
    pics = _pictures(7, seed=4)
    probs = BatchRunner(load_checkpoint(path), device="cpu", batch_size=3).predict(pics)
    x = torch.from_numpy(pics.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    with torch.inference_mode():
        expected = torch.stack([torch.sigmoid(m(x)) for m in members]).mean(0).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(loaded: LoadedModel) -> None:
    pics = _pictures(300, seed=3)
    cpu = BatchRunner(loaded, device="cpu").predict(pics)
    gpu = BatchRunner(loaded, device="cuda", batch_size=128).predict(pics)
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)
    assert next(loaded.model.parameters()).device.type == "cpu"  # the loaded CPU model stays where it was


# ------------------------------------------------------------------------------------------------------------- CLI


def _write_pngs(folder: Path, n: int) -> list[Path]:
    paths = []
    for i, pic in enumerate(_pictures(n, seed=5)):
        path = folder / f"flow_{i}.png"
        save_flow_png(path, pic)
        paths.append(path)
    return paths


def _read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_cli_predict_writes_probabilities(tmp_path: Path, checkpoint: Path, loaded: LoadedModel) -> None:
    pngs = _write_pngs(tmp_path, 3)
    out = tmp_path / "out" / "probs.csv"
    result = CliRunner().invoke(
        main, ["predict", *map(str, pngs), "--weights", str(checkpoint), "--device", "cpu", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    rows = _read_csv(out.read_text())
    assert list(rows[0]) == ["file", *SEED25_AU_ORDER, "aus"]
    assert [r["file"] for r in rows] == [str(p) for p in pngs]
    expected = BatchRunner(loaded, device="cpu").predict(np.stack([_pictures(3, seed=5)[i] for i in range(3)]))
    got = np.array([[float(r[a]) for a in SEED25_AU_ORDER] for r in rows])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    for row, p in zip(rows, expected, strict=True):  # `aus`: reliable AUs (the first five) at threshold 0.5
        active = sorted(int(SEED25_AU_ORDER[i][2:]) for i in range(5) if p[i] >= 0.5)
        assert row["aus"] == "+".join(map(str, active))


def test_cli_predict_stdout_bad_file_and_all_aus(tmp_path: Path, checkpoint: Path) -> None:
    pngs = _write_pngs(tmp_path, 2)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    big = tmp_path / "big.png"
    save_flow_png(big, np.zeros((32, 32, 3), np.uint8))
    result = CliRunner().invoke(main, ["predict", str(pngs[0]), str(bad), str(pngs[1]), str(big),
                                       "--weights", str(checkpoint), "--all-aus"])
    assert result.exit_code == 1
    assert f"Error: {bad}: not a readable image" in result.stderr
    assert f"Error: {big}: expected a 28x28 flow picture, got 32x32" in result.stderr
    assert "2 of 4 file(s) could not be read" in result.stderr
    rows = _read_csv(result.stdout)
    assert [r["file"] for r in rows] == [str(pngs[0]), str(pngs[1])]
    codes = [r["aus"] for r in rows]
    probs = np.array([[float(r[a]) for a in SEED25_AU_ORDER] for r in rows])
    for code, p in zip(codes, probs, strict=True):
        assert code == "+".join(str(n) for n in sorted(int(a[2:]) for a, v in zip(SEED25_AU_ORDER, p, strict=True)
                                                         if v >= 0.5))


def test_cli_predict_plain_state_dict_needs_au_order(tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = tmp_path / "best_htnet_model.pth"
    torch.save(dict(HTNet().state_dict()), plain)
    pngs = _write_pngs(tmp_path, 1)
    result = CliRunner().invoke(main, ["predict", str(pngs[0]), "--weights", str(plain)])
    assert result.exit_code == 1 and "Error:" in result.stderr and "--au-order seed25" in result.stderr
    assert "Traceback" not in result.output
    result = CliRunner().invoke(main, ["predict", str(pngs[0]), "--weights", str(plain), "--au-order", "seed25"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == ",".join(["file", *SEED25_AU_ORDER, "aus"])


def test_cli_usage_and_device_errors(tmp_path: Path, checkpoint: Path) -> None:
    assert CliRunner().invoke(main, ["predict"]).exit_code == 2
    pngs = _write_pngs(tmp_path, 1)
    result = CliRunner().invoke(main, ["predict", str(pngs[0]), "--weights", str(checkpoint), "--device", "tpu"])
    assert result.exit_code == 1 and "unknown device 'tpu'" in result.stderr
    result = CliRunner().invoke(main, ["predict", str(pngs[0]), "--weights", str(tmp_path / "none.pt")])
    assert result.exit_code == 1 and "no such weights file" in result.stderr


def test_cli_weights_list_and_fetch_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AU_ANNOTATE_CACHE", str(tmp_path))
    result = CliRunner().invoke(main, ["weights", "list"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["name", "local", "sha256", "path"]
    assert any(line.startswith("seed ") and " no " in line and "absent" in line for line in lines)
    result = CliRunner().invoke(main, ["weights", "fetch", "nope"])
    assert result.exit_code == 1 and "unknown weights 'nope'" in result.stderr
    result = CliRunner().invoke(main, ["weights", "fetch", "htnet-samm"])
    assert result.exit_code == 1 and "not downloadable" in result.stderr


SAMM_FLOWS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "samm-flow28" / "flows"


@pytest.mark.skipif(not SAMM_FLOWS.is_dir(), reason="../shared/datasets/samm-flow28 not present")
def test_real_flow_pictures_batch_like_single(loaded: LoadedModel) -> None:
    from au_annotate.flow import load_flow_png

    pics = np.stack([load_flow_png(p) for p in sorted(SAMM_FLOWS.glob("*.png"))[:24]])
    assert pics.shape == (24, 28, 28, 3)
    batched = BatchRunner(loaded, device="cpu", batch_size=256).predict(pics)
    single = np.concatenate([BatchRunner(loaded, device="cpu", batch_size=1).predict(p) for p in pics])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert np.isfinite(batched).all() and ((batched >= 0) & (batched <= 1)).all()


def _random_loaded() -> LoadedModel:
    torch.manual_seed(0)
    return LoadedModel(model=HTNet().eval(), config=HTNetConfig(), au_names=SEED25_AU_ORDER,
                       thresholds=np.full(25, 0.5, np.float32), reliable=np.ones(25, bool), sha256="0" * 64,
                       path=Path("mem.pt"), name="mem", meta={})


def test_the_model_always_sees_full_batches() -> None:
    """The last, short batch is padded: every forward pass has the same shape, whatever the number of windows."""
    runner = BatchRunner(_random_loaded(), device="cpu", batch_size=8)
    shapes: list[tuple[int, ...]] = []
    handle = runner.model.register_forward_pre_hook(lambda _module, args: shapes.append(tuple(args[0].shape)))
    try:
        for n in (11, 3, 8, 1):
            assert runner.predict(_pictures(n, seed=n)).shape == (n, 25)
    finally:
        handle.remove()
    assert shapes == [(8, 3, 28, 28)] * 5


def test_probabilities_do_not_depend_on_batch_mates() -> None:
    """The guarantee that holds on every CPU (infer.py's docstring): a window's probabilities alone and among batch
    mates agree to 1e-6 and give the same decisions. Bit-identity is not asserted: on some CPUs (an AMD EPYC) the
    position in the batch changes the last bits of the BLAS sums."""
    loaded = _random_loaded()
    runner = BatchRunner(loaded, device="cpu", batch_size=8)
    pics = np.random.default_rng(0).integers(0, 256, (11, 28, 28, 3), dtype=np.uint8)
    together = runner.predict(pics)
    alone = np.concatenate([runner.predict(pics[i : i + 1]) for i in range(11)])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6)
    assert np.abs(together - loaded.thresholds).min() > 1e-6  # no probability so close to its threshold that ...
    assert np.array_equal(together >= loaded.thresholds, alone >= loaded.thresholds)  # ... a decision could differ
