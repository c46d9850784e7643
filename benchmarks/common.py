"""Shared by the benchmarks: the machine line, result files and the README table.

Each benchmark writes `results/NAME.json` (metadata + rows) and `results/NAME.md`
(the table) and replaces the README section between `<!-- bench:NAME -->` and
`<!-- /bench:NAME -->`, so no number in the README is ever copied by hand.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def measured_text(where: list[dict]) -> str:
    """Where and when a result's seeds were measured (`where`: [{"seeds", "by"}]): the one
    "machine; date", or "seeds 0-2: machine; date; seed 3: ..." when several measured."""
    if len(where) == 1:
        return where[0]["by"]
    return "; ".join(f"seed{'s' * (len(w['seeds']) > 1)} {span(w['seeds'])}: {w['by']}"
                     for w in where)


def span(seeds: list[int]) -> str:
    """0-2 for three or more consecutive seeds, else 0, 2."""
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))


def today() -> str:
    return date.today().isoformat()


def results_name(name: str, size: str) -> str:
    """`name` for a full run (whose tables go into the README), `name.quick` for a quick pass."""
    return name if size == "full" else f"{name}.quick"


def update_readme(text: str, key: str) -> None:
    readme = HERE.parent / "README.md"
    begin, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    s = readme.read_text()
    if begin in s and end in s:
        s = s[: s.index(begin) + len(begin)] + "\n" + text + "\n" + s[s.index(end):]
        readme.write_text(s)


def plain_name(ap, name: str) -> str:
    """`name` for a results file, refused (argparse error) unless it is a plain file name."""
    if not name or "/" in name or name.startswith("."):
        ap.error(f"--name: {name!r} is not a plain file name")
    return name


def write_results(name: str, meta: dict, rows: list | dict, table_md: str, *,
                  readme: bool = True) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(table_md + "\n")
    if readme:
        update_readme(table_md, key=name)
