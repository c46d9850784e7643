"""What the command prints: -q/-v anywhere on the line, whole sentences in --help, plain
progress lines when stderr is not a terminal, and the libraries quiet unless -v."""

import argparse
import io
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import alignloop
from alignloop.cli import build_parser
from alignloop.progress import PlainProgress, tqdm

ROOT = Path(__file__).resolve().parents[1]


def test_quiet_and_verbose_before_or_after_the_command():
    parse = build_parser().parse_args
    assert parse(["run", "c.yaml"]).verbosity == 0
    for argv, verbosity in ((["-q", "run", "c.yaml"], -1), (["run", "c.yaml", "-q"], -1),
                            (["run", "c.yaml", "--quiet"], -1), (["-v", "run", "c.yaml"], 1),
                            (["run", "c.yaml", "-v"], 1), (["train", "c.yaml", "-vv"], 2),
                            (["status", "runs/x", "--verbose"], 1),
                            (["queue", "status", "--run-dir", "runs/x", "-q"], -1)):
        assert parse(argv).verbosity == verbosity, argv


def _commands(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from _commands(sub)


def test_help_is_whole_sentences():
    parser = build_parser()
    text = " ".join(parser.format_help().split())
    assert " ".join(alignloop.__doc__.split("\n\n")[0].split()) in text
    assert text.endswith(".")
    for name, sub in _commands(parser):
        description = " ".join((sub.description or "").split())
        assert description.endswith("."), (name, description)
        # help reaches a terminal: no raw control character (a "\x1b" in a docstring was
        # an ESC byte), and every option says what it does
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", sub.format_help()), name
        for action in sub._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                assert action.help, (name, action.option_strings)


def test_plain_progress_writes_a_line_per_tenth_and_the_last_postfix():
    out = io.StringIO()                                   # not a terminal
    bar = tqdm(total=512, desc="generate", unit="sample", file=out)
    assert isinstance(bar, PlainProgress)
    for _ in range(64):
        bar.update(8)
        bar.set_postfix(loss="0.69")
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 10
    assert lines[0].startswith("generate: 56/512 samples (10%), 00:00 elapsed")
    assert lines[-1].startswith("generate: 512/512 samples (100%)")
    assert lines[-1].endswith("loss=0.69")                # the postfix as of the last step

    out = io.StringIO()
    assert list(tqdm(range(3), desc="tokenize", file=out, disable=True)) == [0, 1, 2]
    assert out.getvalue() == ""


def test_a_terminal_gets_the_tqdm_bar():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    bar = tqdm(total=2, desc="train", file=Terminal())
    assert not isinstance(bar, PlainProgress)
    bar.close()


def test_quiet_libraries_turns_them_down_and_back_up():
    # in a child process: the settings are process-wide
    code = textwrap.dedent("""
        import logging, warnings
        import transformers.utils.logging as tl
        from huggingface_hub.utils import are_progress_bars_disabled
        from alignloop.logs import quiet_libraries

        def shown():
            with warnings.catch_warnings(record=True) as w:
                warnings.warn("`is_gradient_checkpointing` is deprecated", FutureWarning)
                warnings.warn("something else", FutureWarning)
            return [str(x.message) for x in w]

        quiet_libraries(0)
        assert logging.getLogger("accelerate").level == logging.ERROR
        assert tl.get_verbosity() == logging.ERROR and not tl.is_progress_bar_enabled()
        assert are_progress_bars_disabled() and shown() == ["something else"]
        import os
        assert os.environ["VLLM_LOGGING_LEVEL"] == "ERROR"   # read by a vLLM engine started later
        quiet_libraries(1)
        assert os.environ["VLLM_LOGGING_LEVEL"] == "INFO"
        assert logging.getLogger("accelerate").level == logging.INFO
        assert tl.get_verbosity() == logging.INFO and tl.is_progress_bar_enabled()
        assert not are_progress_bars_disabled() and len(shown()) == 2
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_processes_started_by_a_quiet_run_hide_the_harmless_warnings_only():
    """vLLM's engine processes read their warning filters and torch's log levels from the
    environment when they start: quiet, a child shows neither the reduce_op FutureWarning
    nor torch's logger warnings, but still other warnings and torch's errors."""
    grandchild = textwrap.dedent("""
        import logging, warnings, torch
        warnings.warn("`torch.distributed.reduce_op` is deprecated, use ReduceOp", FutureWarning)
        warnings.warn("another deprecation", FutureWarning)
        logging.getLogger("torch._library.triton").warning("Triton not available")
        logging.getLogger("torch._library.triton").error("a torch error")
    """)
    code = textwrap.dedent(f"""
        import os, subprocess, sys
        from alignloop.logs import quiet_libraries
        run = lambda: subprocess.run([sys.executable, "-c", {grandchild!r}],
                                     capture_output=True, text=True).stderr
        os.environ["PYTHONWARNINGS"] = "ignore::ResourceWarning"
        quiet_libraries(0)
        assert os.environ["TORCH_CPP_LOG_LEVEL"] == "ERROR"
        err = run()
        assert "reduce_op" not in err and "Triton" not in err, err
        assert "another deprecation" in err and "a torch error" in err, err
        quiet_libraries(1)
        assert "TORCH_CPP_LOG_LEVEL" not in os.environ and "TORCH_LOGS" not in os.environ
        assert os.environ["PYTHONWARNINGS"] == "ignore::ResourceWarning"   # the user's filter
        err = run()
        assert "reduce_op" in err and "Triton not available" in err, err
        os.environ["TORCH_CPP_LOG_LEVEL"] = "INFO"                     # the user's own level
        quiet_libraries(0)
        assert os.environ["TORCH_CPP_LOG_LEVEL"] == "INFO"
    """)
    env = {k: v for k, v in os.environ.items()
           if k not in ("TORCH_CPP_LOG_LEVEL", "TORCH_LOGS", "PYTHONWARNINGS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr


def test_a_train_prints_plain_progress_and_no_library_noise_unless_verbose(tmp_path):
    # LoRA and a mid-run checkpoint: accelerate's save lines (the warning filters themselves
    # are tested above with warnings raised on purpose)
    args = ["train", "configs/tiny.yaml", "--set", "train.max_steps=2", "--set", "data.limit=8",
            "--set", "model.lora.enabled=true", "--set", "train.save_every=1"]

    def train(*extra) -> str:
        out = subprocess.run([sys.executable, "-m", "alignloop.cli", *args, *extra], cwd=ROOT,
                             capture_output=True, timeout=600)    # bytes: text mode hides "\r"
        assert out.returncode == 0, out.stderr.decode()
        return out.stderr.decode()

    err = train("--out", str(tmp_path / "quiet"))
    for noise in ("Loading weights", "Writing model shards", "FutureWarning", "accelerate",
                  "shared tensor", "\r"):
        assert noise not in err, (noise, err)
    lines = err.splitlines()
    assert any(x.startswith("reference log-probs: 8/8 pairs (100%)") for x in lines), err
    assert any(x.startswith("train: 2/2 steps (100%)") for x in lines), err

    err = train("--out", str(tmp_path / "verbose"), "-v")
    # (not a FutureWarning too: which deprecations a library trips over depends on its
    # version; peft 0.22 stopped tripping the one this test once saw)
    assert "INFO accelerate" in err
    assert "[transformers]" in err                         # transformers' own INFO lines


def test_datasets_bars_are_quiet_unless_verbose(tmp_path):
    # `datasets` draws its bars through its own switch: an `hf:` pairs source and the hf
    # exports printed "Generating train split" / "Saving the dataset" without -v
    code = textwrap.dedent("""
        import json, sys
        from pathlib import Path
        from alignloop.data import read_pairs
        from alignloop.hub import content_dataset
        from alignloop.logs import datasets_bars, quiet_libraries

        work = Path(sys.argv[1])
        for name in ("quiet", "verbose"):
            quiet_libraries(0 if name == "quiet" else 1)
            src = work / f"{name}.jsonl"
            src.write_text(json.dumps({"prompt": "Hi", "chosen": "Hello", "rejected": "Go"}))
            assert len(read_pairs(f"hf:json:{src}")[0]) == 1
            with datasets_bars():
                content_dataset([{"a": 1}]).save_to_disk(str(work / f"{name}.hf"))
            print(f"=={name}==", file=sys.stderr, flush=True)
    """)
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "cache")}
    env.pop("HF_DATASETS_DISABLE_PROGRESS_BARS", None)
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    quiet, verbose = out.stderr.split("==quiet==")
    assert "Generating train split" not in quiet and "Saving the dataset" not in quiet, quiet
    assert "Generating train split" in verbose and "Saving the dataset" in verbose, verbose


def test_by_default_only_bars_warnings_and_the_result_and_q_drops_the_bars(tmp_path):
    """The brief: every long stage shows progress, and nothing else is printed by default.
    alignloop's INFO lines (the placement, pairs read, reference cache) came with every
    command; they are -v's now, and -q leaves warnings, errors and the result."""
    args = ["train", "configs/tiny.yaml", "--set", "train.max_steps=1", "--set", "data.limit=8"]

    def train(out, *extra):
        r = subprocess.run([sys.executable, "-m", "alignloop.cli", *args, "--out",
                            str(tmp_path / out), *extra], cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        return r

    r = train("default")
    assert "INFO" not in r.stderr and "train: 1/1 steps (100%)" in r.stderr
    assert r.stdout.startswith("trained 1 steps on 8 pairs")
    r = train("verbose", "-v")
    assert "INFO alignloop.placement" in r.stderr and "read 8 pairs" in r.stderr
    r = train("quiet", "-q")
    assert r.stderr == "" and r.stdout.startswith("trained 1 steps")
