"""Checkpoint format, the seed's plain state dict, registry lookup and the checksum-verified fetch (no network)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from au_annotate import weights as W
from au_annotate.flow import SEED_FARNEBACK, FarnebackParams
from au_annotate.model import HTNet, HTNetConfig, HTNetEnsemble
from au_annotate.weights import (
    DEFAULT_WEIGHTS,
    FORMAT_VERSION,
    PLAIN_FORMAT_VERSION,
    REGISTRY,
    SEED25_AU_ORDER,
    WeightsError,
    fetch,
    list_weights,
    load_checkpoint,
    load_weights,
    resolve_weights,
    save_checkpoint,
    sha256_file,
)

X = torch.rand(6, 3, 28, 28, generator=torch.Generator().manual_seed(0))
SHIPPED = Path(__file__).resolve().parents[1] / "weights" / "htnet-samm.pt"


def _model(seed: int = 0, **kwargs: int) -> HTNet:
    torch.manual_seed(seed)
    return HTNet(**kwargs).eval()


@pytest.fixture()
def plain_seed_file(tmp_path: Path) -> Path:
    """A plain state dict like the seed's best_htnet_model.pth (random values), saved with torch.save."""
    path = tmp_path / "best_htnet_model.pth"
    torch.save(dict(_model(1).state_dict()), path)
    return path


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("AU_ANNOTATE_CACHE", str(folder))
    return folder


def test_seed_au_order_and_registry_entry() -> None:
    assert len(SEED25_AU_ORDER) == 25 and len(set(SEED25_AU_ORDER)) == 25
    assert SEED25_AU_ORDER[:3] == ("AU04", "AU07", "AU43") and SEED25_AU_ORDER[-1] == "AU56"
    seed = REGISTRY["seed"]
    assert seed.filename == "best_htnet_model.pth" and seed.au_order == "seed25"
    assert seed.sha256 == "51fb9fc5c3a6adcb92b710b0dd87e98ef837c252564d8fac9e059d156f3815cf"
    assert seed.url is not None and seed.url.endswith("/models/best_htnet_model.pth")
    assert REGISTRY[DEFAULT_WEIGHTS].filename == "htnet-megc.pt" and REGISTRY[DEFAULT_WEIGHTS].url is None
    assert REGISTRY["htnet-samm"].filename == "htnet-samm.pt" and REGISTRY["htnet-samm"].url is None  # by name


def test_plain_state_dict_loads_with_seed25(plain_seed_file: Path) -> None:
    loaded = load_checkpoint(plain_seed_file, au_order="seed25")
    assert loaded.au_names == SEED25_AU_ORDER and loaded.config == HTNetConfig()
    assert not loaded.model.training and next(loaded.model.parameters()).device.type == "cpu"
    assert loaded.thresholds.dtype == np.float32 and np.all(loaded.thresholds == 0.5)
    assert loaded.reliable.dtype == bool and loaded.reliable.all()
    assert loaded.sha256 == hashlib.sha256(plain_seed_file.read_bytes()).hexdigest()
    with torch.inference_mode():
        assert torch.allclose(loaded.model(X), _model(1)(X))


def test_plain_state_dict_without_au_order_says_what_to_pass(plain_seed_file: Path) -> None:
    with pytest.raises(WeightsError, match=r"best_htnet_model\.pth: .*--au-order seed25"):
        load_checkpoint(plain_seed_file)


def test_plain_state_dict_with_custom_au_list(tmp_path: Path) -> None:
    path = tmp_path / "five.pth"
    torch.save(dict(_model(2, num_classes=5).state_dict()), path)
    loaded = load_checkpoint(path, au_order="1,2,au4,AU12,14")
    assert loaded.au_names == ("AU01", "AU02", "AU04", "AU12", "AU14") and loaded.config.num_classes == 5
    with pytest.raises(WeightsError, match="shape mismatch"):
        load_checkpoint(path, au_order="seed25")
    with pytest.raises(WeightsError, match=r"^--au-order: unknown AU order 'seed26'"):  # the option, not the file
        load_checkpoint(path, au_order="seed26")


def test_round_trip_keeps_outputs_and_metadata(tmp_path: Path) -> None:
    model = _model(3)
    thresholds = np.linspace(0.2, 0.8, 25).astype(np.float32)
    reliable = np.arange(25) % 3 == 0
    meta = {"metrics": {"AU04": {"f1": np.float32(0.61)}}, "data": {"root": tmp_path, "n": np.int64(157)},
            "input": {"layout": "mosaic"}}
    path = tmp_path / "sub" / "ours.pt"
    digest = save_checkpoint(path, model, config=model.config, au_names=SEED25_AU_ORDER, thresholds=thresholds,
                             reliable=reliable, meta=meta)
    assert digest == sha256_file(path)
    assert [p.name for p in path.parent.iterdir()] == ["ours.pt"]  # atomic write leaves no temp file

    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "au-annotate-htnet" and raw["format_version"] == PLAIN_FORMAT_VERSION
    assert set(raw) == {
        "format", "format_version", "config", "au_names", "thresholds", "reliable", "meta", "state_dict", "ensemble_size"
    }
    assert raw["ensemble_size"] == 1

    loaded = load_checkpoint(path)
    assert loaded.au_names == SEED25_AU_ORDER and loaded.config == model.config and loaded.sha256 == digest
    np.testing.assert_array_equal(loaded.thresholds, thresholds)
    np.testing.assert_array_equal(loaded.reliable, reliable)
    assert loaded.meta["metrics"]["AU04"]["f1"] == pytest.approx(0.61)
    assert loaded.meta["data"] == {"root": str(tmp_path), "n": 157}
    assert loaded.meta["input"]["layout"] == "mosaic" and loaded.input_layout == "mosaic"
    assert loaded.meta["input"]["encoding"] == "seed-hsv" and loaded.meta["flow"]["winsize"] == 15
    assert "created" in loaded.meta
    with torch.inference_mode():
        assert torch.equal(loaded.model(X), model(X))
    # the file's own order is authoritative; a conflicting --au-order is refused, the same order accepted
    assert load_checkpoint(path, au_order="seed25").au_names == SEED25_AU_ORDER
    other = tmp_path / "five.pt"
    small = _model(4, num_classes=5)
    save_checkpoint(other, small.state_dict(), config=small.config, au_names=["AU01", "AU02", "AU04", "AU12", "AU14"])
    with pytest.raises(WeightsError, match="does not match the checkpoint's own AU order"):
        load_checkpoint(other, au_order="seed25")


def test_save_refuses_inconsistent_input(tmp_path: Path) -> None:
    model = _model(0)
    path = tmp_path / "x.pt"
    with pytest.raises(ValueError, match="au_names"):
        save_checkpoint(path, model, config=model.config, au_names=SEED25_AU_ORDER[:24])
    with pytest.raises(ValueError, match="thresholds"):
        save_checkpoint(path, model, config=model.config, au_names=SEED25_AU_ORDER, thresholds=[1.5] * 25)
    with pytest.raises(WeightsError, match="do not fit"):
        save_checkpoint(path, model, config=HTNetConfig(dim=32), au_names=SEED25_AU_ORDER)
    assert not path.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content, cause", [(b"", "empty file"), (b"not a checkpoint at all", "corrupt")])
def test_corrupt_files_are_one_line_errors(tmp_path: Path, content: bytes, cause: str) -> None:
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=cause) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_checkpoint_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "ours.pt"
    save_checkpoint(path, _model(0), config=HTNetConfig(), au_names=SEED25_AU_ORDER)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"ours\.pt: not a readable checkpoint"):
        load_checkpoint(path)
    with pytest.raises(WeightsError, match="no such weights file"):
        load_checkpoint(tmp_path / "absent.pt")


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Path("x")}, path)
    with pytest.raises(WeightsError, match="weights-only load refuses"):
        load_checkpoint(path)


def test_wrong_shapes_and_keys_fail_strict_load(tmp_path: Path) -> None:
    sd = dict(_model(0).state_dict())
    sd["mlp_head.2.weight"] = torch.zeros(25, 64)
    path = tmp_path / "bad_shape.pth"
    torch.save(sd, path)
    with pytest.raises(WeightsError, match=r"bad_shape\.pth: .*shape mismatch.*mlp_head\.2\.weight"):
        load_checkpoint(path, au_order="seed25")
    sd = dict(_model(0).state_dict())
    sd.pop("layers.0.0.pos_emb")
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(WeightsError, match="missing key.*unexpected key"):
        load_checkpoint(path, au_order="seed25")


def test_format_version_and_foreign_format(tmp_path: Path) -> None:
    path = tmp_path / "ours.pt"
    save_checkpoint(path, _model(0), config=HTNetConfig(), au_names=SEED25_AU_ORDER)
    raw = torch.load(path, weights_only=True)
    torch.save({**raw, "format_version": FORMAT_VERSION + 1}, path)
    with pytest.raises(WeightsError, match=f"format version {FORMAT_VERSION + 1} is not supported"):
        load_checkpoint(path)
    torch.save({**raw, "format": "something-else"}, path)
    with pytest.raises(WeightsError, match="unknown checkpoint format"):
        load_checkpoint(path)
    torch.save({**raw, "config": {**raw["config"], "depth": 3}}, path)
    with pytest.raises(WeightsError, match="bad model config.*depth"):
        load_checkpoint(path)
    torch.save({"epoch": 3, "optimizer": {}}, path)
    with pytest.raises(WeightsError, match="not an au-annotate checkpoint"):
        load_checkpoint(path)


def test_resolve_weights(tmp_path: Path, cache: Path, plain_seed_file: Path) -> None:
    assert resolve_weights(str(plain_seed_file)) == plain_seed_file
    with pytest.raises(WeightsError, match="unknown weights 'nope'"):
        resolve_weights("nope")
    with pytest.raises(WeightsError, match="no such weights file"):
        resolve_weights(str(tmp_path / "missing.pt"))
    with pytest.raises(WeightsError, match="au-annotate weights fetch seed"):
        resolve_weights("seed")
    cache.mkdir()
    (cache / "best_htnet_model.pth").write_bytes(plain_seed_file.read_bytes())
    assert resolve_weights("seed") == cache / "best_htnet_model.pth"
    found = W.locate(DEFAULT_WEIGHTS)
    if found is None:  # before the shipped weights exist, the default says how to get them
        with pytest.raises(WeightsError, match="htnet-megc.*au-annotate train"):
            resolve_weights(None)
    else:
        assert resolve_weights(None) == found


def test_load_weights_by_registry_name_verifies_checksum(
    cache: Path, plain_seed_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache.mkdir()
    local = cache / "best_htnet_model.pth"
    local.write_bytes(plain_seed_file.read_bytes())
    with pytest.raises(WeightsError, match="checksum mismatch for 'seed'"):  # not the real seed file
        load_weights("seed")
    monkeypatch.setitem(REGISTRY, "seed", dataclasses.replace(REGISTRY["seed"], sha256=sha256_file(local)))
    loaded = load_weights("seed")  # the entry supplies au_order seed25
    assert loaded.name == "seed" and loaded.au_names == SEED25_AU_ORDER


def _entry_for(monkeypatch: pytest.MonkeyPatch, payload: bytes, *, sha: str | None = None) -> None:
    entry = dataclasses.replace(REGISTRY["seed"], sha256=sha or hashlib.sha256(payload).hexdigest())
    monkeypatch.setitem(REGISTRY, "seed", entry)


def test_fetch_verifies_and_renames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = os.urandom(3 * (1 << 20) + 17)  # several chunks
    _entry_for(monkeypatch, payload)
    urls: list[str] = []

    def opener(url: str) -> io.BytesIO:
        urls.append(url)
        return io.BytesIO(payload)

    seen: list[int] = []
    dest = fetch("seed", cache_dir=tmp_path / "c", opener=opener, progress=lambda done, total: seen.append(done))
    assert dest == tmp_path / "c" / "best_htnet_model.pth" and dest.read_bytes() == payload
    assert urls == [REGISTRY["seed"].url] and seen[-1] == len(payload)
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]
    # already there and verified: no second download
    assert fetch("seed", cache_dir=tmp_path / "c", opener=lambda url: pytest.fail("downloaded twice")) == dest
    rows = {row.entry.name: row for row in list_weights(cache=tmp_path / "c")}
    assert rows["seed"].checksum == "ok" and rows["seed"].path == dest
    dest.write_bytes(payload[:-1] + bytes([payload[-1] ^ 0xFF]))  # always a different last byte (b"x" was 1/256 a no-op)
    rows = {row.entry.name: row for row in list_weights(cache=tmp_path / "c")}
    assert rows["seed"].checksum == "MISMATCH"


def test_fetch_bad_checksum_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _entry_for(monkeypatch, b"", sha="0" * 64)
    folder = tmp_path / "c"
    with pytest.raises(WeightsError, match="checksum mismatch.*nothing was saved"):
        fetch("seed", cache_dir=folder, opener=lambda url: io.BytesIO(b"tampered bytes"))
    assert list(folder.iterdir()) == []


def test_fetch_network_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _entry_for(monkeypatch, b"abc")

    def opener(url: str) -> io.BytesIO:
        raise urllib.error.URLError("no route to host")

    with pytest.raises(WeightsError, match="download failed.*no route to host"):
        fetch("seed", cache_dir=tmp_path / "c", opener=opener)
    assert list((tmp_path / "c").iterdir()) == []


def test_fetch_refuses_shipped_and_unknown(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="ship with au-annotate"):
        fetch(DEFAULT_WEIGHTS, cache_dir=tmp_path, opener=lambda url: pytest.fail("no download"))
    with pytest.raises(WeightsError, match="unknown weights"):
        fetch("nope", cache_dir=tmp_path)


def test_ensemble_round_trip_averages_member_probabilities(tmp_path: Path) -> None:
    members = [_model(10 + k) for k in range(3)]
    with torch.no_grad():
        for m in members:  # spread the logits so averaging probabilities differs from averaging logits
            m.mlp_head[2].weight.mul_(25)
    path = tmp_path / "ens.pt"
    save_checkpoint(path, members, config=HTNetConfig(), au_names=SEED25_AU_ORDER, meta={"ensemble": "3 seeds"})
    loaded = load_checkpoint(path)
    assert isinstance(loaded.model, HTNetEnsemble) and len(loaded.model.members) == 3
    assert torch.load(path, weights_only=True)["ensemble_size"] == 3
    with torch.inference_mode():
        mean_p = torch.stack([torch.sigmoid(m(X)) for m in members]).mean(0)
        mean_logit_p = torch.sigmoid(torch.stack([m(X) for m in members]).mean(0))
        got = torch.sigmoid(loaded.model(X))
    assert torch.allclose(got, mean_p, atol=1e-6)
    assert (got - mean_logit_p).abs().max() > 1e-3
    # a one-member list or ensemble is stored as a plain HTNet
    single = tmp_path / "one.pt"
    save_checkpoint(single, HTNetEnsemble(members[:1]), config=HTNetConfig(), au_names=SEED25_AU_ORDER)
    assert isinstance(load_checkpoint(single).model, HTNet)
    with pytest.raises(ValueError, match="share one HTNet configuration"):
        HTNetEnsemble([members[0], HTNet(dim=32)])


def test_checkpoint_records_the_pipelines_farneback_parameters(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    save_checkpoint(path, _model(0), config=HTNetConfig(), au_names=SEED25_AU_ORDER)
    flow_meta = load_checkpoint(path).meta["flow"]
    assert flow_meta["method"] == "farneback"
    assert FarnebackParams.from_meta(flow_meta) == SEED_FARNEBACK  # what flow.py computes is what the file says
    assert SEED_FARNEBACK.to_meta() == W.DEFAULT_FLOW_META
    with pytest.raises(ValueError, match=r"unknown Farneback parameter\(s\): winsz"):
        FarnebackParams.from_meta({**flow_meta, "winsz": 3})
    with pytest.raises(ValueError, match="flow method 'tvl1'"):
        FarnebackParams.from_meta({**flow_meta, "method": "tvl1"})


@pytest.mark.parametrize("name", [DEFAULT_WEIGHTS, "htnet-samm"])
def test_default_weights_are_pinned_to_the_shipped_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        name: str) -> None:
    from click.testing import CliRunner

    from au_annotate.cli import main

    entry = REGISTRY[name]
    shipped = SHIPPED.parent / entry.filename
    if not shipped.exists():
        pytest.skip("shipped checkpoint not built")
    assert entry.sha256 == sha256_file(shipped)
    loaded = load_weights(name if name != DEFAULT_WEIGHTS else None)  # by name: verified against the pin
    assert loaded.name == name and loaded.sha256 == entry.sha256
    monkeypatch.setenv("AU_ANNOTATE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(W, "search_dirs", lambda cache=None: (SHIPPED.parent,))
    assert {r.entry.name: r.checksum for r in list_weights()}[name] == "ok"
    out = CliRunner().invoke(main, ["weights", "list"]).stdout.splitlines()
    assert any(line.startswith(f"{name} ") and f" ok (pinned {entry.sha256[:12]}) " in line for line in out)

    # the same checkpoint with one meta value changed: still a valid file, but not the shipped one
    raw = torch.load(shipped, weights_only=True)
    raw["meta"]["training"]["reliable_rule"] = "edited"
    folder = tmp_path / "w"
    folder.mkdir()
    torch.save(raw, folder / entry.filename)
    monkeypatch.setattr(W, "search_dirs", lambda cache=None: (folder,))
    with pytest.raises(WeightsError, match=f"checksum mismatch for '{name}'.*not the shipped file.*--weights PATH"):
        load_weights(name)
    assert load_checkpoint(folder / entry.filename).au_names == loaded.au_names  # by path it still loads
    assert {r.entry.name: r.checksum for r in list_weights()}[name] == "MISMATCH"
    out = CliRunner().invoke(main, ["weights", "list"]).stdout.splitlines()
    assert any(line.startswith(f"{name} ") and f" MISMATCH (pinned {entry.sha256[:12]}) " in line for line in out)


def test_shipped_default_states_and_follows_the_kappa_rule() -> None:
    """The default checkpoint's rule text is the code's (KappaRule.describe), its model card quotes it verbatim, its
    reported AUs are what the rule gives on its stored evaluation, and none of them lacks a deciding threshold."""
    from au_annotate.training.reliability import KAPPA_RULE
    from au_annotate.weights import DEFAULT_WEIGHTS, load_weights

    loaded = load_weights(DEFAULT_WEIGHTS)
    training = loaded.meta["training"]
    assert training["reliable_rule"] == KAPPA_RULE.describe()
    card = (Path(__file__).resolve().parents[1] / "weights" / "MODEL_CARD.htnet-megc.md").read_text(encoding="utf-8")
    assert KAPPA_RULE.describe() in card
    reported = [a for a, r in zip(loaded.au_names, loaded.reliable, strict=True) if r]
    assert reported == KAPPA_RULE.apply(loaded.meta["metrics"], training["positive_ratio"])
    calibrated = dict(zip(loaded.au_names, loaded.calibrated, strict=True))
    assert reported and all(calibrated[a] and training["positive_ratio"][a] <= 2 for a in reported)
    assert 0 < training["emotion_bar"] < 1
