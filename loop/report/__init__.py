"""Drift reports: what moved, what improved, what regressed, how trustworthy the labels were.

`write_round_report(run_dir, k)` reads whatever artifacts round k has (see
`alignloop.evaluation` for the eval files; round 0 has no labels, a missing
previous round means no vs-previous numbers) and writes `round_NNN/report/`:
report.json (its contract: `sections`), report.md, report.html and the figures.
`write_run_report(run_dir)` writes RUN_DIR/report.html, the cross-round view.
The loop's gates judge a finished report.json with `gate_verdict`.

    inputs.py     RoundInputs, load_round, previous_round, resolve_config: what a report reads
    metrics.py    the statistics: bootstrap estimates, KL, win rates, length, label stats
    sections.py   report.json, section by section (build_round_report), report.html examples
    alerts.py     alerts and skipped checks written into the report (check_report); the
                  loop's gates (slice_drops, gate_verdict)
    schema.py     validate_report against schema.json
    write.py      write_round_report, read_round_report, write_run_report
    markdown.py, html.py, plots.py   rendering a report.json
    lookup.py     get_path: a value deep in a report.json, or None
"""

from alignloop.report.alerts import alerts, gate_verdict, slice_drops
from alignloop.report.inputs import (
    MissingRunConfig,
    RoundInputs,
    load_round,
    previous_round,
    resolve_config,
)
from alignloop.report.lookup import get_path
from alignloop.report.schema import ReportSchemaError, validate_report
from alignloop.report.sections import SCHEMA_VERSION, build_round_report
from alignloop.report.write import (
    REPORT_DIR,
    read_round_report,
    write_round_report,
    write_run_report,
)

__all__ = [
    "REPORT_DIR", "SCHEMA_VERSION", "MissingRunConfig", "ReportSchemaError", "RoundInputs",
    "alerts", "build_round_report", "gate_verdict", "get_path", "load_round", "previous_round",
    "read_round_report", "resolve_config", "slice_drops", "validate_report",
    "write_round_report", "write_run_report",
]
