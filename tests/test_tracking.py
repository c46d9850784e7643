"""Experiment tracking (`alignloop.tracking`): what each tracker holds, read back with that
library's own reader (TensorBoard's EventAccumulator, MLflow's client, wandb's offline
run file, trackio's SQLite storage); resume continues the same tracked run; a tracker
added late is sent the finished rounds; the trainer's per-step hook on a real train.
No network: wandb runs offline, MLflow on local stores, trackio locally."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from alignloop.config import TrackingConfig, config_from_dict, to_dict
from alignloop.rounds.state import config_fingerprint
from alignloop.tracking import TrackingError, open_tracker, step_offset
from alignloop.tracking.metrics import HEADLINE

from tests.fake_run import make_reported_run

GATE = {"tripped": False, "reason": "", "action": ""}


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    return make_reported_run(tmp_path_factory.mktemp("fake"))


@pytest.fixture
def run(fake_run, tmp_path):
    return Path(shutil.copytree(fake_run, tmp_path / "run"))


def _log(run: Path, k: int) -> list[dict]:
    return [json.loads(x) for x in (run / f"round_{k:03d}/train_log.jsonl").read_text().splitlines()]


def _report(run: Path, k: int) -> dict:
    return json.loads((run / f"round_{k:03d}/report/report.json").read_text())


def _open(run: Path, *report_to: str, **kw):
    cfg = config_from_dict({"model": {"name": "builtin:tiny-random"}})
    return open_tracker(TrackingConfig(report_to=report_to, **kw), run, config=to_dict(cfg))


def _play(tracker, run: Path, k: int) -> None:
    """What the loop does for round k: each step as the trainer logs it, then the round."""
    on_log = tracker.step_logger(k, offset=step_offset(run, k))
    for row in _log(run, k):
        on_log(row)
    tracker.train_done(k)
    tracker.log_round(k, _report(run, k), GATE)


def _expected_losses(run: Path, rounds: int) -> list[tuple[int, float]]:
    out, offset = [], 0
    for k in range(rounds):
        out += [(offset + r["step"], r["loss"]) for r in _log(run, k)]
        offset += _log(run, k)[-1]["step"]
    return out


def _same(got, expected) -> bool:
    """Same steps, values equal to float precision."""
    return [s for s, _ in got] == [s for s, _ in expected] and \
        [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6)


def _tensorboard(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tracking/tensorboard/run"))
    acc.Reload()
    return acc


def test_tensorboard_holds_every_step_round_and_the_config(run):
    tracker = _open(run, "tensorboard")
    for k in range(2):
        _play(tracker, run, k)
    tracker.close()
    acc = _tensorboard(run)
    losses = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    expected = _expected_losses(run, 2)
    assert [s for s, _ in losses] == [s for s, _ in expected] == list(range(1, 13))
    assert [v for _, v in losses] == pytest.approx([v for _, v in expected], rel=1e-6)
    assert [e.value for e in acc.Scalars("train/round")] == [0.0] * 6 + [1.0] * 6
    for k in range(2):
        kl = _report(run, k)["kl_to_base"]["k1"]["sequence"]
        for tag, part in (("round/kl_to_base", "value"), ("round/kl_to_base_lo", "lo"),
                          ("round/kl_to_base_hi", "hi")):
            assert acc.Scalars(tag)[k].step == k
            assert acc.Scalars(tag)[k].value == pytest.approx(kl[part], rel=1e-6)
    pairs = _report(run, 1)["labels"]["pairs_by_source"]
    assert acc.Scalars("round/labels/pairs_human")[0].value == pairs["human"]
    assert [e.value for e in acc.Scalars("round/alerts")] == [len(_report(run, k)["alerts"])
                                                              for k in range(2)]
    assert "round/win_rate_vs_base" in acc.Tags()["scalars"]
    assert {"config/text_summary", "round/alerts_text/text_summary"} <= set(acc.Tags()["tensors"])
    config_text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "tiny-random" in config_text


def test_resume_continues_the_same_tracked_run(run):
    """Two processes' worth: round 0, close, reopen, round 0 again (done: not re-sent) and
    round 1. One MLflow run and one TensorBoard log directory hold both rounds once."""
    from mlflow.tracking import MlflowClient

    first = _open(run, "tensorboard", "mlflow")
    _play(first, run, 0)
    first.close()
    ids = json.loads((run / "tracking.json").read_text())
    second = _open(run, "tensorboard", "mlflow")
    second.log_round(0, _report(run, 0), GATE)          # a resumed run passes round 0 again
    _play(second, run, 1)
    second.close()
    state = json.loads((run / "tracking.json").read_text())
    assert state["mlflow"]["ids"] == ids["mlflow"]["ids"]
    assert state["mlflow"]["rounds"] == state["tensorboard"]["rounds"] == [0, 1]

    client = MlflowClient(state["mlflow"]["ids"]["uri"])
    run_id = state["mlflow"]["ids"]["run_id"]
    exp = client.get_experiment_by_name("alignloop")
    assert [r.info.run_id for r in client.search_runs([exp.experiment_id])] == [run_id]
    kl = client.get_metric_history(run_id, "round/kl_to_base")
    assert sorted(m.step for m in kl) == [0, 1]
    losses = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train/loss"))
    assert _same(losses, _expected_losses(run, 2))
    assert client.get_run(run_id).data.params["train.beta"] == "0.1"
    assert client.get_run(run_id).info.status == "FINISHED"

    acc = _tensorboard(run)
    assert len(list((run / "tracking/tensorboard/run").glob("events.out.tfevents.*"))) == 2
    assert [e.step for e in acc.Scalars("round/kl_to_base")] == [0, 1]


def test_a_tracker_added_later_gets_the_finished_rounds(run):
    """Rounds done before tracking was turned on: their steps come from train_log.jsonl."""
    tracker = _open(run, "tensorboard")
    for k in range(2):
        tracker.log_round(k, _report(run, k), GATE)       # the train stages had run already
    tracker.close()
    acc = _tensorboard(run)
    assert _same([(e.step, e.value) for e in acc.Scalars("train/loss")], _expected_losses(run, 2))


def test_mlflow_local_file_store(run, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")    # MLflow's opt-in for file stores
    uri = (tmp_path / "mlruns").as_uri()
    tracker = _open(run, "mlflow", mlflow_tracking_uri=uri, project="exp", run_name="r1")
    _play(tracker, run, 0)
    tracker.close()
    client = MlflowClient(uri)
    (found,) = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert found.info.run_name == "r1"
    history = client.get_metric_history(found.info.run_id, "train/rewards/margin")
    assert [m.value for m in history] == pytest.approx([r["rewards/margin"] for r in _log(run, 0)])
    headline = {f"round/{tag}" for tag, _ in HEADLINE}
    assert {"round/kl_to_base", "round/alerts"} <= set(found.data.metrics) and \
        len(headline & set(found.data.metrics)) >= 6
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert "config.yaml" in artifacts


def _wandb_records(path: Path) -> list:
    """The records of a wandb run file: a 7-byte header, then LevelDB-log framed records
    (checksum 4, length 2, type 1) in 32 KiB blocks, each a protobuf `Record`."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, out, buf, pos = path.read_bytes(), [], b"", 7
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):            # FULL or LAST
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
        if kind == 0 and length == 0:
            break
    return out


def test_wandb_offline_run_files(run, monkeypatch):
    """wandb offline mode works here without network: each process writes one offline run
    directory, both under the run id kept in tracking.json (`wandb sync` joins them)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    first = _open(run, "wandb")
    _play(first, run, 0)
    first.close()
    second = _open(run, "wandb")
    _play(second, run, 1)
    second.close()
    run_id = json.loads((run / "tracking.json").read_text())["wandb"]["ids"]["run_id"]
    files = sorted((run / "tracking/wandb").glob(f"offline-run-*-{run_id}*/run-{run_id}.wandb"))
    assert len(files) == 2
    deadline = time.time() + 60     # wandb-core may still be writing after finish() returns
    while time.time() < deadline and not all(
            [r.WhichOneof("record_type") for r in _wandb_records(f)][-1:] == ["exit"]
            for f in files):
        time.sleep(0.5)
    history, config = [], {}
    for f in files:
        for rec in _wandb_records(f):
            kind = rec.WhichOneof("record_type")
            if kind == "history":
                history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                for i in rec.history.item})
            elif kind == "run":
                assert rec.run.run_id == run_id
                config.update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
    losses = [(h["train/global_step"], h["train/loss"]) for h in history if "train/loss" in h]
    assert _same(losses, _expected_losses(run, 2))
    rounds = [(h["round/round"], h["round/kl_to_base"]) for h in history if "round/kl_to_base" in h]
    assert _same(rounds, [(k, _report(run, k)["kl_to_base"]["k1"]["sequence"]["value"])
                          for k in range(2)])
    assert config["train"]["beta"] == 0.1


TRACKIO_SCRIPT = """
import json, sys
from pathlib import Path
from alignloop.config import TrackingConfig
from alignloop.tracking import open_tracker, step_offset
run = Path(sys.argv[1])
for k in range(2):
    t = open_tracker(TrackingConfig(report_to=("trackio",), project="p"), run, config={"a": 1})
    on_log = t.step_logger(k, offset=step_offset(run, k))
    for line in (run / f"round_{k:03d}/train_log.jsonl").read_text().splitlines():
        on_log(json.loads(line))
    t.train_done(k)
    t.log_round(k, json.loads((run / f"round_{k:03d}/report/report.json").read_text()), None)
    t.close()
from trackio.sqlite_storage import SQLiteStorage
print("RESULT " + json.dumps({"runs": SQLiteStorage.get_runs("p"), "logs": SQLiteStorage.get_logs("p", "run")}))
"""


def test_trackio_local_run(run, tmp_path):
    """trackio keeps its data in $TRACKIO_DIR (read when it is imported: a fresh process)."""
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio")}
    out = subprocess.run([sys.executable, "-c", TRACKIO_SCRIPT, str(run)], env=env, text=True,
                         capture_output=True, timeout=300, check=True).stdout
    got = json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[7:])
    # nothing but the script's own line: trackio's exit hook once finished the closed run
    # again and printed "* Run finished. Uploading logs ..." after the command's output
    assert [x for x in out.splitlines() if x.strip()] == [f"RESULT {json.dumps(got)}"], out
    assert got["runs"] == ["run"]                      # both processes: one tracked run
    losses = [(r["step"], r["train/loss"]) for r in got["logs"] if "train/loss" in r]
    assert _same(losses, _expected_losses(run, 2))
    assert [r["round/round"] for r in got["logs"] if "round/kl_to_base" in r] == [0, 1]


def test_a_missing_package_is_named_before_anything_is_written(run, monkeypatch):
    from alignloop.rounds import Loop
    from alignloop.tracking import backends

    real = backends.importlib.util.find_spec
    monkeypatch.setattr(backends.importlib.util, "find_spec",
                        lambda name: None if name == "wandb" else real(name))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    cfg = config_from_dict({"model": {"name": "builtin:tiny-random"}, "loop": {"rounds": 2},
                            "tracking": {"report_to": ["tensorboard", "wandb"]}})
    with pytest.raises(TrackingError, match=r"tracking.report_to.*wandb.*pip install wandb"):
        Loop(cfg, run).run()
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_tracking_keys_leave_the_run_fingerprint_alone():
    plain = config_from_dict({})
    tracked = config_from_dict({"tracking": {"report_to": ["tensorboard", "mlflow"],
                                             "project": "x", "run_name": "y", "dir": "/tmp/t"}})
    assert config_fingerprint(plain)[0] == config_fingerprint(tracked)[0]
    with pytest.raises(ValueError, match="tracking.report_to"):
        config_from_dict({"tracking": {"report_to": ["neptune"]}})


def test_real_train_logs_every_step_through_the_hook(tmp_path):
    """`alignloop train` with report_to: the trainer's on_log hook sends each step-log line."""
    from alignloop.cli import main

    out = tmp_path / "train"
    code = main(["train", "configs/tiny.yaml", "--out", str(out), "--set", "data.limit=8",
                 "--set", "train.max_steps=2", "--set", "train.batch_size=4",
                 "--set", "train.grad_accum=1", "--set", "tracking.report_to=[tensorboard]"])
    assert code == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tracking/tensorboard/train"))
    acc.Reload()
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert _same([(e.step, e.value) for e in acc.Scalars("train/loss")],
                 [(r["step"], r["loss"]) for r in rows])
    assert len(rows) == 2 and "train/round" not in acc.Tags()["scalars"]


def test_a_tracker_that_cannot_start_stops_the_run_before_any_stage(tmp_path, monkeypatch):
    # wandb online without a login raised its own UsageError at round 0's train stage, a
    # traceback after the reference pass; now one line naming the tracker, before stage one
    import alignloop.tracking as tracking
    from alignloop.config import load_config
    from alignloop.rounds import Loop

    class UsageError(Exception):
        pass

    real = tracking.open_backend

    def no_login(name, **kw):
        if name == "wandb":
            raise UsageError("api_key not configured (no-tty). call wandb.login(key=...)")
        return real(name, **kw)

    monkeypatch.setattr(tracking, "open_backend", no_login)
    cfg = load_config("configs/tiny.yaml", ["tracking.report_to=[tensorboard,wandb]"])
    with pytest.raises(TrackingError, match=r"tracking.report_to': wandb could not start: "
                                            r"api_key not configured"):
        Loop(cfg, tmp_path / "run").run()
    assert not (tmp_path / "run").exists()       # a refused new run leaves no directory


def test_real_wandb_without_a_login_refuses_train_and_run_leaving_nothing(tmp_path):
    """The real wandb, online with no API key (an empty HOME): `train` left OUT/tracking
    and `run` a run directory with queue.db behind a refusal."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    env.update(HOME=str(tmp_path / "home"), WANDB_CONFIG_DIR=str(tmp_path / "home"))
    for cmd, flag in (("train", "--out"), ("run", "--run-dir")):
        target = tmp_path / cmd
        out = subprocess.run([sys.executable, "-m", "alignloop.cli", cmd, "configs/tiny.yaml",
                              flag, str(target), "--set", "tracking.report_to=[wandb]",
                              "--set", "train.max_steps=1"], env=env, capture_output=True,
                             text=True, timeout=300, stdin=subprocess.DEVNULL,
                             cwd=Path(__file__).resolve().parents[1])
        assert out.returncode == 2, out.stderr
        assert "tracking.report_to': wandb could not start" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and not target.exists()
