"""Model cards (`alignloop.cards`) and `alignloop push` (`alignloop.hub`) at a mocked HfApi:
the card states what the round's artifacts say, byte for byte the same for the same run;
push uploads exactly the policy's files plus the card, and refuses what cannot work."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml
from alignloop.artifacts import read_parquet
from alignloop.cards import model_card, write_model_card
from alignloop.config import config_from_dict, load_config
from alignloop.hub import HubError, push, push_files
from alignloop.report.markdown import fmt

from tests.fake_run import make_reported_run


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    return make_reported_run(tmp_path_factory.mktemp("fake"))


@pytest.fixture
def run(fake_run, tmp_path):
    return Path(shutil.copytree(fake_run, tmp_path / "run"))


def _meta_and_body(text: str) -> tuple[dict, str]:
    _, header, body = text.split("---\n", 2)
    return yaml.safe_load(header), body


def test_card_states_the_round_from_its_artifacts(run):
    cfg = config_from_dict({"model": {"name": "builtin:smollm2-135m-instruct"},
                            "train": {"loss": "soft", "beta": 0.25},
                            "reference": {"mode": "previous"}})
    text = model_card(run, 1, cfg, reference=str(run / "round_000/policy"))
    meta, body = _meta_and_body(text)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "transformers"
    assert {"alignloop", "dpo", "loss-soft"} <= set(meta["tags"])
    assert "# run: round 1 policy" in body
    assert "| loss | `soft` |" in body and "| β | 0.25 |" in body
    assert "| reference mode | `previous` |" in body
    assert "| reference this round | `round_000/policy` |" in body
    pairs = read_parquet(run / "round_001/pairs.parquet")
    for source, n in Counter(p["source"] for p in pairs).items():
        assert f"| {source} | {n} |" in body
    report = json.loads((run / "round_001/report/report.json").read_text())
    kl = report["kl_to_base"]["k1"]["sequence"]
    assert f"| {fmt(kl['value'])} | {fmt(kl['lo'])} – {fmt(kl['hi'])} | {kl['n']} |" in body
    win = report["win_rate_vs_previous"]["overall"]
    assert f"{fmt(win['lo'])} – {fmt(win['hi'])}" in body
    assert f"Alerts: {len(report['alerts'])}." in body
    steps = [json.loads(x) for x in (run / "round_001/train_log.jsonl").read_text().splitlines()]
    assert f"| optimizer steps | {steps[-1]['step']} |" in body


def test_card_bytes_are_the_same_for_the_same_run(run, tmp_path):
    cfg = load_config(run / "config.yaml")
    first = write_model_card(run, 0, cfg, reference=cfg.model.name).read_bytes()
    again = write_model_card(run, 0, cfg, reference=cfg.model.name).read_bytes()
    moved = Path(shutil.copytree(run, tmp_path / "elsewhere" / "run"))
    there = write_model_card(moved, 0, cfg, reference=cfg.model.name).read_bytes()
    assert first == again == there
    assert (run / "round_000/policy/README.md").read_bytes() == first
    meta, body = _meta_and_body(first.decode())
    assert "base_model" not in meta             # a random test model has no Hub origin
    assert "the base model (`builtin:tiny-random`)" in body


def test_license_and_datasets_come_from_local_metadata(run, tmp_path):
    base = tmp_path / "my-base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: mit\nbase_model: org/origin\n---\n# base\n")
    cfg = config_from_dict({"model": {"name": str(base)}, "data": {"path": "hf:org/prefs"}})
    meta, _ = _meta_and_body(model_card(run, 0, cfg, reference=str(base)))
    assert meta["license"] == "mit" and meta["base_model"] == "org/origin"
    assert meta["datasets"] == ["org/prefs"]


def _fake_policy(run: Path, k: int, *, adapter_base: str | None = None) -> Path:
    policy = run / f"round_{k:03d}/policy"
    policy.mkdir(parents=True, exist_ok=True)
    weights = "adapter_model.safetensors" if adapter_base else "model.safetensors"
    (policy / weights).write_bytes(b"weights %d" % k)
    (policy / "config.json").write_text("{}")
    (policy / "tokenizer.json").write_text("{}")
    if adapter_base:
        (policy / "alignloop_base.json").write_text(json.dumps({"base": adapter_base}))
    return policy


class FakeHfApi:
    """The huggingface_hub boundary: records the calls and the folder as it was uploaded."""
    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kw):
        FakeHfApi.calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, *, folder_path, repo_id, **kw):
        files = {str(p.relative_to(folder_path)): p.read_bytes()
                 for p in Path(folder_path).rglob("*") if p.is_file()}
        FakeHfApi.calls.append(("upload_folder", repo_id, files, kw))
        return type("CommitInfo", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub

    FakeHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    return FakeHfApi.calls


def test_push_uploads_the_policy_and_its_card(run, hub):
    policy = _fake_policy(run, 1)
    write_model_card(run, 1, load_config(run / "config.yaml"), reference="builtin:tiny-random")
    (policy / "merged").mkdir()
    (policy / "merged" / "model.safetensors").write_bytes(b"cache")
    files = push_files(run, 1)
    assert sorted(files) == ["README.md", "config.json", "model.safetensors", "tokenizer.json"]
    url = push(run, 1, "me/policy", private=True)
    assert url == "https://hub/me/policy/commit/1"
    (_, repo, kw), (_, repo2, uploaded, _) = hub
    assert repo == repo2 == "me/policy" and kw["private"] is True
    assert sorted(uploaded) == sorted(files)
    assert uploaded["model.safetensors"] == b"weights 1"
    assert uploaded["README.md"] == (policy / "README.md").read_bytes()   # the same card


def test_push_leaves_out_symlinks(run, hub, tmp_path):
    # a link in policy/ could point at anything (a token file): its target is not uploaded
    policy = _fake_policy(run, 1)
    secret = tmp_path / "secret.txt"
    secret.write_text("hf_token")
    (policy / "notes.txt").symlink_to(secret)
    assert "notes.txt" not in push_files(run, 1)
    push(run, 1, "me/policy")
    assert all(b"hf_token" not in data for data in hub[-1][2].values())


def test_push_refuses_what_cannot_work(run, hub, capsys):
    from alignloop.cli import main

    with pytest.raises(HubError, match="no round 7"):
        push_files(run, 7)
    with pytest.raises(HubError, match="no trained policy"):
        push_files(run, 1)                                  # the fake run has no policy/
    _fake_policy(run, 1, adapter_base="./../../round_000/policy")
    with pytest.raises(HubError, match="--merged"):
        push_files(run, 1)                                  # an adapter on a local policy
    assert main(["push", str(run), "--round", "1", "--repo", "me/p"]) == 2
    assert "--merged" in capsys.readouterr().err
    assert hub == []                                        # nothing was uploaded


def test_push_merged_uploads_the_merged_weights(run, hub):
    policy = _fake_policy(run, 1, adapter_base="./../../round_000/policy")
    (policy / "merged").mkdir()                             # the cache, already built
    (policy / "merged" / "model.safetensors").write_bytes(b"merged weights")
    (policy / "merged" / "config.json").write_text("{}")
    push(run, 1, "me/merged", merged=True)
    (_, _, uploaded, _) = hub[1]
    assert sorted(uploaded) == ["README.md", "config.json", "model.safetensors"]
    assert uploaded["model.safetensors"] == b"merged weights"
    meta, body = _meta_and_body(uploaded["README.md"].decode())
    assert meta["library_name"] == "transformers" and "LoRA adapter merged in" in body
