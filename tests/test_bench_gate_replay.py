"""benchmarks/gate_replay.py: which replayed decisions are known, and what they change."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gate_replay as gr  # noqa: E402

KEEP = {"tripped": False, "reason": "", "action": "", "held": ""}
BACK = {"tripped": True, "reason": "r", "action": "rollback", "held": ""}


def _fig(failing, gates):
    rounds = [{"round": k, "latent_failing": v, "latent_overall": v, "ends_by_eos": 0.5,
               "gate": g} for k, (v, g) in enumerate(zip(failing, gates, strict=True))]
    return {"rounds": rounds, "wall_s": 60.0, "failing_slices": ["s"]}


def test_the_runs_own_decisions_replay_exactly():
    fig = _fig([0.1, 0.5, 1.0], ["kept", "kept", "rolled back"])
    row = gr.replay_row(0, fig, [KEEP, KEEP, BACK])
    assert row["exact"] and row["never_falls"] == "yes" and row["gain"] == 0.4


def test_a_change_in_the_last_round_is_exact_and_moves_the_gain():
    fig = _fig([0.1, 0.5, 1.0], ["kept", "kept", "rolled back"])
    row = gr.replay_row(0, fig, [KEEP, KEEP, KEEP])
    assert row["exact"] and row["gates"] == ["kept"] * 3
    assert row["gain"] == 0.9 and row["never_falls"] == "yes"
    falls = gr.replay_row(0, _fig([0.1, 0.5, 0.2], ["kept", "kept", "rolled back"]),
                          [KEEP, KEEP, KEEP])
    assert falls["exact"] and falls["never_falls"] == "no"


def test_rounds_after_a_changed_decision_are_unknown():
    # round 1 kept instead of rolled back: round 2 would have started elsewhere
    fig = _fig([0.15, 0.04, 0.8], ["kept", "rolled back", "rolled back"])
    row = gr.replay_row(1, fig, [KEEP, KEEP, KEEP])
    assert not row["exact"] and row["known_rounds"] == 2
    assert row["failing"] == [0.15, 0.04, None] and row["gain"] is None
    assert row["never_falls"] == "no"            # the known round 1 already fell
    rises = gr.replay_row(1, _fig([0.15, 0.3, 0.1], ["kept", "rolled back", "kept"]),
                          [KEEP, KEEP, KEEP])
    assert not rises["exact"] and rises["never_falls"] == "unknown"


def test_bad_arguments_are_refused_by_name(monkeypatch, capsys, tmp_path):
    import pytest

    for argv, named in ((["--name", "../x"], "--name"), (["--confidence", "1.0"], "--confidence"),
                        (["--seeds", "a"], "--seeds"), (["--runs", str(tmp_path)], "no finished run")):
        monkeypatch.setattr(sys, "argv", ["gate_replay.py", *argv])
        with pytest.raises(SystemExit) as e:
            gr.main()
        assert e.value.code == 2 and named in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_footer_command_names_runs_and_name_where_not_the_defaults():
    from pathlib import Path

    plain = gr.rerun_command("0,1", "0.9", Path("runs/demo_seeds"), "gate_replay")
    assert plain == "python benchmarks/gate_replay.py --seeds 0,1 --confidence 0.9"
    other = gr.rerun_command("5,6", "0.8", Path("runs/demo_seeds_c09"), "gate_replay_c09")
    assert other.endswith("--confidence 0.8 --runs runs/demo_seeds_c09 --name gate_replay_c09")
