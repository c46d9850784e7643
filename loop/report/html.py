"""report.html of a round and of a run: one self-contained file each.

Plots are embedded as base64 PNG, styles inline, no script and no external
asset, so the file opens from disk or as a CI artifact. Every piece of text
that comes from data (prompts, responses, slice names, reasons) is escaped.

The run view reads RUN_DIR/state.json when present. The part of its contract
used here (written by the round driver, `alignloop.rounds.state`):

    {"rounds": {"<k>": {"stages": {"<stage>": {"status": "running" | "done" | "failed",
                                               "started": t, "finished": t, "seconds": s}},
                        "gate": {"tripped": bool, "reason": str,
                                 "action": "flag" | "stop" | "rollback"}}}}

Stages are listed in the order they appear (the order they ran); `gate` is
optional. A round with a directory but no report.json is reported from its eval
artifacts when it has them (computed here, not written), or as "in progress".
"""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path

from alignloop.report.lookup import get_path
from alignloop.report.markdown import (
    IMPLICIT_HEADER,
    INTERVALS_NOTE,
    KL_HEADER,
    KL_K1_NOTE,
    LATENT_REWARD_NOTE,
    LENGTH_HEADER,
    SLICE_HEADER,
    TRAIN_HEADER,
    context_lines,
    fmt,
    gate_line,
    headline_rows,
    implicit_rows,
    interval,
    kl_rows,
    label_rows,
    length_ratio_line,
    length_rows,
    skipped_lines,
    slice_rows,
    train_row,
)

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1200px; color: #222;
       padding: 0 16px; }
h1 { font-size: 24px; } h2 { font-size: 19px; border-bottom: 1px solid #ddd; margin-top: 32px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
img { max-width: 100%; display: block; margin: 8px 0; }
.alert { background: #fdecea; border-left: 4px solid #d93025; padding: 6px 10px; margin: 4px 0; }
.ok { background: #e6f4ea; border-left: 4px solid #188038; padding: 6px 10px; }
.skipped { background: #fef7e0; border-left: 4px solid #f9ab00; padding: 6px 10px; margin: 4px 0; }
.note { color: #666; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); gap: 8px; }
.text { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 12px;
        max-width: 480px; overflow-wrap: anywhere; }
"""


class Raw(str):
    """Markup built here from escaped parts: a table cell that is not escaped again."""


def _cell(c) -> str:
    return c if isinstance(c, Raw) else escape(str(c))


def _table(header, rows) -> str:
    head = "".join(f"<th>{_cell(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(figures: dict[str, bytes], name: str, alt: str) -> str:
    if name not in figures:
        return ""
    data = base64.b64encode(figures[name]).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _section(sid: str, title: str, *parts: str) -> str:
    return f'<section id="{sid}"><h2>{escape(title)}</h2>\n' + "\n".join(p for p in parts if p) \
        + "\n</section>"


def _reason(sec: dict) -> str:
    return "" if sec.get("available") else f'<p class="note">{escape(sec.get("reason", ""))}</p>'


def _alerts(alerts: list[dict]) -> str:
    if not alerts:
        return '<p class="ok">No alerts.</p>'
    return "".join(f'<div class="alert"><b>{escape(a["kind"])}</b>: {escape(a["message"])}</div>'
                   for a in alerts)


def _skipped(report: dict) -> str:
    """The checks the report skipped: those past their threshold highlighted, then the rest."""
    lines = skipped_lines(report)
    if not lines:
        return ""
    warn = "".join(f'<div class="skipped">{escape(line)}</div>' for w, line in lines if w)
    rest = "".join(f"<li>{escape(line)}</li>" for w, line in lines if not w)
    return ('<p class="note">Checks skipped (they could not alert):</p>' + warn
            + (f'<ul class="note">{rest}</ul>' if rest else ""))


def _notes(*notes: str) -> str:
    return "".join(f'<p class="note">{escape(n)}</p>' for n in notes)


def prompt_display_text(prompt: str) -> str:
    """A prompt stored as JSON text, for display: plain text, or `role: content` lines."""
    try:
        value = json.loads(prompt)
    except (TypeError, json.JSONDecodeError):
        return str(prompt)
    if isinstance(value, list):
        return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" if isinstance(m, dict)
                         else str(m) for m in value)
    return str(value)


def _examples(examples: list[dict]) -> str:
    if not examples:
        return '<p class="note">No examples (no policy samples, or report.examples is 0).</p>'
    other = examples[0]["other_label"]
    rows = []
    for e in examples:
        verdict = ("tie" if e["tie"] else f"p(current better) = {fmt(e['p_a'])}"
                   if e["p_a"] is not None else "not compared")
        latent = ("" if e["latent_current"] is None else
                  f"\nlatent reward: {fmt(e['latent_other'])} → {fmt(e['latent_current'])}")
        cells = [f"[{e['slice'] or '(none)'}] {e['prompt_id']}\n\n{prompt_display_text(e['prompt'])}",
                 e["other"] if e["other"] is not None else "(no response)", e["current"],
                 verdict + latent]
        rows.append("<tr>" + "".join(f'<td><div class="text">{escape(str(c))}</div></td>'
                                     for c in cells) + "</tr>")
    head = "".join(f"<th>{escape(h)}</th>" for h in
                   ("prompt", f"{other}", "this round's policy", "judge"))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render_round_html(report: dict, figures: dict[str, bytes], examples: list[dict]) -> str:
    k = report["round"]
    ir, tr, lab = report["implicit_reward"], report["train"], report["labels"]
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in report.get("notes", []))
    body = [
        f"<h1>Round {k} drift report</h1>",
        f'<p class="note">report.json schema v{report["schema_version"]}. '
        f"{escape(INTERVALS_NOTE)}</p>",
        "".join(f"<p>{escape(line)}</p>" for line in context_lines(report)),
        _section("summary", "Summary", _alerts(report["alerts"]), _skipped(report),
                 f"<p>{escape(gate_line(report))}</p>" if gate_line(report) else "", notes,
                 _table(("metric", "value", "95% interval", "n / why missing"),
                        headline_rows(report)), _notes(KL_K1_NOTE, LATENT_REWARD_NOTE)),
        _section("training", "Training", _reason(tr), _img(figures, "training", "training curves"),
                 _table(TRAIN_HEADER, [train_row(tr) + (_link(tr["log"]),)])
                 if tr.get("available") else ""),
        _section("kl", "Drift: KL divergence", _reason(report["kl_to_reference"]),
                 _img(figures, "kl", "KL estimates with 95% intervals"),
                 _table(KL_HEADER, kl_rows(report)) if kl_rows(report) else "",
                 f'<p class="note">{escape(get_path(report, "kl_to_reference", "estimator") or "")}</p>'),
        _section("win-rates", "Win rates", _reason(report["win_rate_vs_previous"]),
                 _reason(report["win_rate_vs_base"]),
                 _img(figures, "win_rates", "win rates per slice with 95% intervals")),
        _section("slices", "Per slice", _reason(report["latent_reward"]),
                 _img(figures, "latent_reward", "latent reward per slice, this round vs previous"),
                 _notes(LATENT_REWARD_NOTE) if get_path(report, "latent_reward", "available") else "",
                 _table(SLICE_HEADER, slice_rows(report))),
        _section("length", "Length and degeneration", _reason(report["length"]),
                 _img(figures, "length", "length histograms"),
                 _table(LENGTH_HEADER, length_rows(report)) if length_rows(report) else "",
                 f"<p>{escape(length_ratio_line(report['length']))}</p>"
                 if get_path(report, "length", "available") else ""),
        _section("implicit-reward", "Implicit reward", _reason(ir),
                 (_table(IMPLICIT_HEADER, implicit_rows(ir)) +
                  f"<p>accuracy {fmt(ir['accuracy']['value'])} ({interval(ir['accuracy'])}), "
                  f"margin {fmt(ir['margin']['value'])} ({interval(ir['margin'])}), beta "
                  f"{fmt(ir['beta'])}, {ir['n']} pairs; likelihood displacement: "
                  f"{fmt(ir['likelihood_displacement'])}</p>") if ir.get("available") else ""),
        _section("labels", "Labels", _reason(lab), _img(figures, "labels", "label statistics"),
                 _table(("statistic", "value"), label_rows(lab)) if lab.get("available") else "",
                 f'<p class="note">{escape(lab.get("note", ""))}</p>' if lab.get("note") else ""),
        _section("examples", "Examples", _examples(examples)),
    ]
    return _page(f"alignloop round {k} drift report", body)


# --------------------------------------------------------------------------- the run


def run_status(state: dict | None, rounds: list[int]) -> list[str]:
    """Plain sentences: where the loop is, where it stopped or was gated."""
    if state is None:
        return ["No state.json: stage status unknown (reports only)."]
    srounds = state.get("rounds", {})
    lines = []
    for k in sorted(srounds, key=int):
        gate = get_path(srounds, k, "gate") or {}
        if gate.get("tripped"):
            action = gate.get("action", "flag")
            then = {"stop": "the loop stopped after this round",
                    "rollback": "the round was rolled back: the next one starts from the policy "
                                "this round started from"}.get(action, "flagged")
            lines.append(f"Round {k}: gate tripped ({gate.get('reason', 'no reason given')}); "
                         f"action {action}: {then}.")
        if gate.get("held"):
            lines.append(f"Round {k}: the gate held back falls it could not tell from noise: "
                         f"{gate['held']}.")
        for name, info in (get_path(srounds, k, "stages") or {}).items():
            if info.get("status") in ("running", "failed"):
                lines.append(f"Round {k}: stage {name} is {info['status']}"
                             + (" (or was interrupted)" if info["status"] == "running" else "") + ".")
    if srounds:
        last = max(srounds, key=int)
        stages = get_path(srounds, last, "stages") or {}
        if stages:
            name, info = list(stages.items())[-1]
            lines.append(f"Last recorded stage: round {last}, {name} ({info.get('status', '?')}).")
    return lines or ["No stage has run yet."]


def _stage_cell(rs: dict) -> str:
    return ", ".join(f"{n}: {i.get('status', '?')}" for n, i in (get_path(rs, "stages") or {}).items())


def _link(href: str) -> Raw:
    return Raw(f'<a href="{escape(href)}">{escape(href)}</a>')


def _report_link(k: int, how: str) -> str:
    if how == "done":
        return _link(f"round_{k:03d}/report/report.html")
    return {"computed": "computed here from eval artifacts (no report.json yet)"}.get(how, how)


def _run_metrics(done: dict[int, dict]) -> tuple[str, str]:
    """The table of headline metrics by round, and its footnotes (k1 KL, latent reward)."""
    def th(label: str, note: str, mark: str) -> Raw:
        return Raw(f'<span title="{escape(note)}">{escape(label)}</span><sup>{mark}</sup>')

    rows = []
    for k, rep in sorted(done.items()):
        def v(*path, rep=rep):
            x = get_path(rep, *path)
            return fmt(x.get("value") if isinstance(x, dict) else x)

        def kl(key, rep=rep):             # the k1 estimate can be negative: its interval with it
            e = get_path(rep, key, "k1", "sequence")
            return v(key, "k1", "sequence") + (f" ({interval(e)})" if interval(e) != "—" else "")
        rows.append((k, kl("kl_to_base"), kl("kl_to_reference"),
                     v("win_rate_vs_previous", "overall"), v("win_rate_vs_base", "overall"),
                     v("latent_reward", "models", "policy", "overall"),
                     v("length", "models", "policy", "mean_tokens"),
                     v("length", "ends_by_eos", "policy"),
                     v("labels", "human_alpha"), v("labels", "judge_human", "kappa"),
                     len(rep.get("alerts", []))))
    header = ("round", th("KL to base (k1), 95% interval", KL_K1_NOTE, "1"),
              th("KL to reference (k1), 95% interval", KL_K1_NOTE, "1"), "win vs previous",
              "win vs base", th("latent reward", LATENT_REWARD_NOTE, "2"), "mean tokens",
              "ends by EOS", "annotators' alpha", "judge-human kappa", "alerts")
    return _table(header, rows), _notes(f"¹ {KL_K1_NOTE}", f"² {LATENT_REWARD_NOTE}")


TRENDS_NOTE = (
    "Read across rounds with care: some lines join figures measured against something that "
    "changes each round. KL to the reference and the win rate against the previous policy "
    "compare each round with its own reference and starting policy (with reference.mode "
    "previous, the policy before it), and every round's win rates come from the judges as "
    "refit with that round's labels. KL to the base model and the latent reward are measured "
    "against the same things in every round.")


def render_run_html(run_dir: Path, reports: dict[int, tuple[dict | None, str]],
                    state: dict | None) -> str:
    from alignloop.report.plots import run_figures

    done = {k: r for k, (r, _) in reports.items() if r is not None}
    figures = run_figures(done) if done else {}
    srounds = get_path(state, "rounds") or {}
    status_rows = []
    for k, (_, how) in sorted(reports.items()):
        rs = srounds.get(str(k), {})
        gate = get_path(rs, "gate") or {}
        status_rows.append((k, _stage_cell(rs) or "—",
                            f"tripped: {gate.get('reason', '')} → {gate.get('action', '')}"
                            if gate.get("tripped") else ("passed" if gate else "—")
                            + (f" (held back as not significant: {gate['held']})"
                               if gate.get("held") else ""),
                            _report_link(k, how)))
    alerts = [f"Round {k}: {a['kind']}: {a['message']}" for k, r in sorted(done.items())
              for a in r.get("alerts", [])]
    skipped = [f"Round {k}: {line}" for k, r in sorted(done.items())
               for warn, line in skipped_lines(r) if warn]
    body = [
        f"<h1>alignloop run {escape(run_dir.name)}</h1>",
        _section("status", "Run status",
                 "".join(f"<p>{escape(line)}</p>" for line in run_status(state, sorted(reports))),
                 _table(("round", "stages", "gate", "report"), status_rows)),
        _section("trends", "Trends across rounds",
                 "" if figures else '<p class="note">No round has evaluation results yet.</p>',
                 _notes("KL is the k1 estimate (¹) and the latent reward exists only for the demo "
                        "and simulated tasks (²): see the notes under the table of headline "
                        "metrics below.", TRENDS_NOTE) if figures else "",
                 '<div class="grid">' + "".join((
                     _img(figures, "kl", "KL to base and to reference by round"),
                     _img(figures, "win_rates", "win rates by round"),
                     _img(figures, "latent_reward", "latent reward per slice by round"),
                     _img(figures, "length", "mean length by round"),
                     _img(figures, "agreement", "label agreement by round"))) + "</div>"),
        _section("metrics", "Headline metrics by round", *_run_metrics(done)),
        _section("alerts", "Alerts", "".join(f'<div class="alert">{escape(a)}</div>' for a in alerts)
                 or '<p class="ok">No alerts.</p>',
                 "".join(f'<div class="skipped">{escape(s)}</div>' for s in skipped)),
    ]
    return _page(f"alignloop run {run_dir.name}", body)
