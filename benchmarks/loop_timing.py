"""A config's whole loop timed side by side: this checkout against an earlier commit, or
against itself with other settings, one after the other in one run of this script
(timings on a shared machine are only comparable as ratios measured together).

    python benchmarks/loop_timing.py --before 75f16ae [--after a2ebdec] [--config configs/quick.yaml]
    python benchmarks/loop_timing.py --config configs/demo.yaml \
        --set-before generation.backend=hf --set-after generation.backend=vllm

Each side runs `alignloop run CONFIG` in a fresh run directory and cache-warm model
directory, in its own process; the earlier commit's code is exported with `git archive`
into a temporary package tree put first on PYTHONPATH (the same venv, the same libraries);
so is `--after`'s, when given, else this checkout runs as it is. Without `--before`
both sides run this checkout; `--set-before` / `--set-after` KEY=VALUE (repeatable) go to
that side's `alignloop run --set`.
Reported per side: wall seconds, peak RSS of the process (ru_maxrss), the run directory's
size, and the per-stage seconds from state.json. Writes benchmarks/results/loop_timing.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# the source folders and the package each becomes (pyproject's package-dir)
PACKAGE_DIRS = {"loop": "alignloop", "generation": "alignloop/generation",
                "labeling": "alignloop/labeling", "training": "alignloop/training"}


def export_commit(rev: str, dest: Path) -> Path:
    """`rev`'s packages laid out as importable `alignloop` under dest/pkg; returns dest/pkg."""
    src = dest / "src"
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    pkg = dest / "pkg"
    for folder, package in PACKAGE_DIRS.items():
        (pkg / package).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(src / folder, pkg / package)
    return pkg


def run_side(name: str, config: Path, run_dir: Path, pythonpath: str | None,
             overrides: list[str] = ()) -> dict:
    from alignloop.rounds.disk import tree_bytes

    env = {**os.environ}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    code = ("import resource, sys, runpy; sys.argv = ['alignloop'] + sys.argv[1:]\n"
            "try:\n    runpy.run_module('alignloop.cli', run_name='__main__')\n"
            "finally:\n    print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
            " resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)")
    start = time.perf_counter()
    sets = [a for kv in overrides for a in ("--set", kv)]
    r = subprocess.run([sys.executable, "-c", code, "-q", "run", str(config), "--run-dir",
                        str(run_dir), *sets], capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"{name}: alignloop run failed\n{r.stderr[-3000:]}")
    own, children = _maxrss(r.stderr)
    state = json.loads((run_dir / "state.json").read_text())
    stages = {}
    for rs in state["rounds"].values():
        for stage, info in rs["stages"].items():
            stages[stage] = stages.get(stage, 0.0) + info.get("seconds", 0.0)
    return {"side": name, "seconds": round(seconds, 1), "peak_rss_mb": round(max(own, children) / 1024),
            "run_dir_mb": round(tree_bytes(run_dir) / 2**20, 1),
            "stage_seconds": {k: round(v, 1) for k, v in stages.items()}}


def _maxrss(stderr: str) -> tuple[int, int]:
    for line in stderr.splitlines():
        if line.startswith("MAXRSS"):
            own, children = line.split()[1:]
            return int(own), int(children)
    raise SystemExit("no MAXRSS line from the timed process")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", help="the earlier commit to compare with (default: this checkout)")
    ap.add_argument("--after", help="the later commit (default: this checkout as it is)")
    ap.add_argument("--config", type=lambda p: Path(p).resolve(), default=ROOT / "configs" / "quick.yaml")
    ap.add_argument("--set-before", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--set-after", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    if not (args.before or args.set_before or args.set_after):
        ap.error("nothing to compare: give --before and/or --set-before/--set-after")
    if not args.config.is_file():
        ap.error(f"--config: no such file {args.config}")
    for flag, rev in (("--before", args.before), ("--after", args.after)):
        if rev and subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet",
                                   f"{rev}^{{commit}}"], capture_output=True).returncode != 0:
            ap.error(f"{flag}: {rev!r} is not a commit of this repository")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, check=True).stdout.strip())
    with tempfile.TemporaryDirectory(prefix="loop-timing-") as tmp:
        tmp = Path(tmp)
        pkg = str(export_commit(args.before, tmp / "before")) if args.before else None
        after = str(export_commit(args.after, tmp / "after")) if args.after else None
        label = args.after or f"{head}{'+changes' if dirty else ''}"
        rows = [run_side(_side("before", args.before or label, args.set_before), args.config,
                         tmp / "run-before", pkg, args.set_before),
                run_side(_side("now", label, args.set_after), args.config, tmp / "run-now",
                         after, args.set_after)]
    before, now = rows
    result = {"config": str(args.config.relative_to(ROOT)), "rows": rows,
              "time_ratio": round(now["seconds"] / before["seconds"], 2),
              "cpu": _cpu_model(), "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    out = HERE / "results"
    (out / "loop_timing.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"`{result['config']}`, run one after the other on {result['cpu']} "
             f"({result['cores']} cores), {result['date']}:", "",
             "| code | wall s | peak RSS MB | run dir MB | seconds by stage (all rounds) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['side']} | {r['seconds']} | {r['peak_rss_mb']} | {r['run_dir_mb']} | "
              + ", ".join(f"{k} {v}" for k, v in r["stage_seconds"].items() if v >= 1) + " |"
              for r in rows]
    lines += ["", f"now / before wall time: {result['time_ratio']}x"]
    (out / "loop_timing.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _side(name: str, code: str, overrides: list[str]) -> str:
    return f"{name} ({code}{''.join('; ' + kv for kv in overrides)})"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
