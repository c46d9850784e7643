"""report.md: the numbers of a round's report.json as Markdown tables (terminal, pull request).

`headline_rows` and `slice_rows` are shared with the HTML report, so both show
the same numbers in the same order.
"""

from __future__ import annotations

import math
import re

from alignloop.report.lookup import get_path


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"
    return str(x)


def pct(x) -> str:
    return "—" if x is None else f"{100 * x:.0f}%"


def interval(e: dict | None) -> str:
    if not e or e.get("lo") is None or e.get("hi") is None:
        return "—"
    return f"{fmt(e['lo'])} – {fmt(e['hi'])}"


KL_K1_NOTE = (
    "KL [k1]: the mean, over this round's policy samples y, of log π(y) − log q(y), with q the "
    "reference or the base model (nats per response, or per token). It is unbiased, but one "
    "sample's term can be negative, so for a small true KL the mean itself can come out below "
    "0: read the 95% interval, not the sign. k3 (never negative) is in the KL section.")
LATENT_REWARD_NOTE = (
    "Latent reward: the hidden ground-truth utility of a response, which exists only for the "
    "demo task and other simulated tasks (alignloop.demo.panel: the simulated annotators' mean "
    "utility, rewarding a warm tone and staying on topic and penalising answers over 30 words). "
    "Judges and annotators never see it; it shows whether their preferences moved the policy "
    "the right way by that utility's measure. It scores sentiment, length and the embedding "
    "similarity of the response to the user's message, not whether an answer is true or "
    "helpful: a warm, short reply near the topic scores well even when it answers something "
    "else, so read the examples too. A real task has none, and its latent-reward rows stay "
    "empty.")


INTERVALS_NOTE = (
    "Intervals are bootstrap 95% percentile intervals over prompts; a win rate's is widened "
    "to the Wilson score interval at its effective number of comparisons (between its "
    "prompts and its comparisons) where that is wider: the bootstrap alone gives 1 – 1 when "
    "every comparison went one way. The implicit reward's are over held-out pairs. Win rates "
    "count ties as half.")


def context_lines(report: dict) -> list[str]:
    """What the figures compare with, in sentences (reports from before this was written
    have no context: none)."""
    c = report.get("context")
    if not c:
        return []
    out = [f"Previous: {c['previous']}. Reference (the DPO log-ratio's): {c['reference']} "
           f"(reference.mode: {c['reference_mode']})."]
    if c["targeted_slices"] is not None:
        out.append("New pairs this round were sampled on the failure slices: "
                   + (", ".join(c["targeted_slices"]) or "none") + ".")
    return out + [c["judges"]]


def gate_line(report: dict) -> str | None:
    """The loop's gate on this round in one sentence (None for reports without it)."""
    g = report.get("gate")
    if not g:
        return None
    kl = ("off" if g["max_kl_to_base"] <= 0 else
          f"KL(policy ‖ base) {fmt(g['kl_to_base'])} of a budget of {g['max_kl_to_base']:g} "
          "nats/response")
    m, c = g["slice_checks"], g["slice_confidence"]
    drop = ("slice falls off" if g["max_slice_drop"] <= 0 else
            f"a slice with at least {g['min_slice_samples']} samples may fall by at most "
            f"{g['max_slice_drop']:g}" + (
                f", a larger fall counted only when its p-value is below (1 − {c:g}) / {m} "
                f"= {(1 - c) / max(m, 1):.3g} (Bonferroni over the {m} slice checks)"
                if c > 0 else ""))
    verdict = (f"tripped ({g['reason']}), so {g['action']}" if g["tripped"] else "passed")
    held = f"; held back as not significant: {g['held']}" if g["held"] else ""
    source = "as state.json records it" if g["recorded"] else "as the loop will record it"
    return (f"Loop gate (loop.gate, on a trip: {g['on_trip']}): {kl}; {drop}. Verdict "
            f"({source}): {verdict}{held}.")


def length_ratio_line(length: dict) -> str:
    """Mean policy length against the previous round's and the base model's."""
    def ratio(x) -> str:
        return "—" if x is None else f"{x:.2f}x"

    return (f"Mean length vs previous round: {ratio(length['ratio_vs_previous'])}; "
            f"vs base: {ratio(length['ratio_vs_base'])}.")


def judge_human_agreement(jh: dict) -> str:
    """"80% of 9 items", or "—" and why no item could be compared."""
    if not jh["items"]:
        why = jh.get("reason") or "undefined"
        return f"— (no item had both a judge verdict and a human majority: {why})"
    ci = (f" (95% CI {pct(jh['agreement_lo'])} – {pct(jh['agreement_hi'])})"
          if jh.get("agreement_lo") is not None else "")
    return f"{pct(jh['agreement'])} of {jh['items']} items{ci}"


def skipped_lines(report: dict) -> list[tuple[bool, str]]:
    """(would have alerted, "kind: reason") of the checks the report skipped, those that
    would have alerted first."""
    rows = report.get("skipped_checks") or []
    out = [(bool(c["would_alert"]), f"{c['kind']}: {c['reason']}"
            + (" — past the alert threshold" if c["would_alert"] else "")) for c in rows]
    return sorted(out, key=lambda r: not r[0])


def headline_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """(metric, value, 95% interval, n or why it is missing) for the headline table."""
    rows = []

    def add(label: str, section: str, *path: str, why: str | None = None):
        if not get_path(report, section, "available"):
            rows.append((label, "—", "—", get_path(report, section, "reason") or "not computed"))
            return
        e = get_path(report, section, *path)
        n = fmt(get_path(e, "n")) if e is not None else (why or "not computed")
        rows.append((label, fmt(get_path(e, "value")), interval(e), n))

    add("KL(policy ‖ reference), nats/response [k1]", "kl_to_reference", "k1", "sequence")
    add("KL(policy ‖ reference), nats/token [k1]", "kl_to_reference", "k1", "per_token")
    add("KL(policy ‖ base), nats/response [k1]", "kl_to_base", "k1", "sequence")
    add("KL(policy ‖ base), nats/token [k1]", "kl_to_base", "k1", "per_token")
    add("Win rate vs previous policy (ties ½)", "win_rate_vs_previous", "overall")
    add("Win rate vs base model (ties ½)", "win_rate_vs_base", "overall")
    add("Latent reward, this policy", "latent_reward", "models", "policy", "overall")
    add("Latent reward, previous policy", "latent_reward", "models", "previous", "overall",
        why=get_path(report, "latent_reward", "previous_reason"))
    add("Latent reward change vs previous (paired by prompt)", "latent_reward",
        "change_vs_previous", "overall", why=get_path(report, "latent_reward", "previous_reason"))
    add("Ends by EOS, this policy (not cut at the length limit)", "length", "ends_by_eos",
        "policy")
    add("Ends by EOS, previous policy", "length", "ends_by_eos", "previous",
        why=get_path(report, "latent_reward", "previous_reason") or "no previous policy")
    add("Ends by EOS, base model", "length", "ends_by_eos", "base",
        why="no base-model samples")
    add("Implicit-reward accuracy (held-out pairs)", "implicit_reward", "accuracy")
    add("Implicit-reward margin", "implicit_reward", "margin")
    return rows


def slice_rows(report: dict) -> list[tuple[str, ...]]:
    """Per slice: win rate vs previous, vs base, latent reward previous -> now, and its
    change paired by prompt with its interval (the plain difference of the two means in
    reports from before the paired change)."""
    wp = get_path(report, "win_rate_vs_previous", "by_slice") or {}
    wb = get_path(report, "win_rate_vs_base", "by_slice") or {}
    lr_now = get_path(report, "latent_reward", "models", "policy", "by_slice") or {}
    lr_prev = get_path(report, "latent_reward", "models", "previous", "by_slice")
    delta = get_path(report, "latent_reward", "delta_vs_previous", "by_slice") or {}
    paired = get_path(report, "latent_reward", "change_vs_previous", "by_slice") or {}
    targeted = set(get_path(report, "context", "targeted_slices") or [])
    out = []
    for s in sorted(set(wp) | set(wb) | set(lr_now)):
        def win(d, s=s):
            e = d.get(s)
            return f"{fmt(e['value'])} ({interval(e)}, n={e['n']})" if e else "—"
        change = (f"{fmt(paired[s]['value'])} ({interval(paired[s])}, n={paired[s]['n']})"
                  if s in paired else fmt(delta.get(s)))
        out.append((s + (" (targeted)" if s in targeted else "") if s else "(none)", win(wp),
                    win(wb), fmt(get_path(lr_prev, s, "value")), fmt(get_path(lr_now, s, "value")),
                    change))
    return out


KL_HEADER = ("KL(policy ‖ q)", "estimator", "nats/response", "95% interval", "nats/token",
             "95% interval", "samples / prompts")
LENGTH_HEADER = ("model", "responses", "mean tokens", "ends by EOS", "hits length limit",
                 "distinct-2", "repeated 3-grams")
IMPLICIT_HEADER = ("log-prob change of", "vs base", "95% interval", "vs reference", "95% interval")
SLICE_HEADER = ("slice", "win vs previous", "win vs base", "latent reward (previous)",
                "latent reward (now)", "change (paired by prompt)")
TRAIN_HEADER = ("steps", "epochs", "last step: loss", "reward margin (β·log-ratio)",
                "reward accuracy", "step log")


def kl_rows(report: dict) -> list[tuple[str, ...]]:
    out = []
    for key, name in (("kl_to_reference", "reference"), ("kl_to_base", "base")):
        sec = report[key]
        if sec.get("available"):
            out += [(name, est, fmt(sec[est]["sequence"]["value"]), interval(sec[est]["sequence"]),
                     fmt(sec[est]["per_token"]["value"]), interval(sec[est]["per_token"]),
                     f"{sec['n_samples']} / {sec['n_prompts']}") for est in ("k1", "k3")]
    return out


def length_rows(report: dict) -> list[tuple[str, ...]]:
    length, degen = report["length"], report["degeneration"]
    if not length.get("available"):
        return []
    dm = degen.get("models", {}) if degen.get("available") else {}
    return [(m, fmt(s["n"]), fmt(s["mean_tokens"]), pct(s["share_stop"]), pct(s["share_length"]),
             fmt(get_path(dm, m, "distinct_2")), pct(get_path(dm, m, "repeated_3gram_rate")))
            for m, s in length["models"].items()]


def implicit_rows(ir: dict) -> list[tuple[str, ...]]:
    return [(side, fmt(ir["logp_change_vs_base"][side]["value"]),
             interval(ir["logp_change_vs_base"][side]),
             fmt(ir["logp_change_vs_reference"][side]["value"]),
             interval(ir["logp_change_vs_reference"][side])) for side in ("chosen", "rejected")]


def train_row(tr: dict) -> tuple[str, ...]:
    """The last step's figures: one batch (`pairs_per_step` pairs, said in the accuracy)."""
    f, n = tr["final"], tr.get("pairs_per_step")
    return (fmt(tr["steps"]), fmt(tr.get("epoch")), fmt(f["loss"], 4), fmt(f["margin"], 4),
            fmt(f["accuracy"]) + (f" (batch of {n} pairs)" if n else ""))


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#|])")


def md_text(text: object) -> str:
    """`text` as Markdown that shows it as written: its characters with a meaning there
    (emphasis, links, HTML tags, headings, table bars) escaped, newlines as spaces. For
    text that comes from data (alert messages name slices from a user's prompt file)."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).splitlines()))


def _table(header: tuple[str, ...], rows) -> list[str]:
    esc = [tuple(str(c).replace("|", "\\|").replace("\n", " ") for c in r) for r in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in esc]


def render_markdown(report: dict, figures: dict | None = None) -> str:
    k = report["round"]
    md = [f"# Round {k} drift report", "",
          f"Schema v{report['schema_version']}. {INTERVALS_NOTE} Plots: "
          "[report.html](report.html).", ""]
    context = context_lines(report)
    if context:
        md += ["\n>\n".join(f"> {md_text(line)}" for line in context), ""]
    md += ["## Alerts", ""]
    md += [f"- **{a['kind']}**: {md_text(a['message'])}" for a in report["alerts"]] or ["None."]
    if skipped_lines(report):
        md += ["", "Checks skipped (they could not alert; **bold**: the number is past the "
                   "threshold):", ""]
        md += [f"- **{line}**" if warn else f"- {line}" for warn, line in skipped_lines(report)]
    if gate_line(report):
        md += ["", md_text(gate_line(report))]
    if report.get("notes"):
        md += [""] + [f"> {n}" for n in report["notes"]]
    md += ["", "## Headline", ""] + _table(("metric", "value", "95% interval", "n"),
                                           headline_rows(report))
    md += ["", KL_K1_NOTE, "", LATENT_REWARD_NOTE]
    if kl_rows(report):
        md += ["", "### KL by estimator", ""] + _table(KL_HEADER, kl_rows(report))
        md += ["", next(report[k]["estimator"] for k in ("kl_to_reference", "kl_to_base")
                        if report[k].get("available"))]
    rows = slice_rows(report)
    if rows:
        md += ["", "## Per slice", ""] + _table(SLICE_HEADER, rows)
    length = report["length"]
    if length.get("available"):
        md += ["", "## Length and degeneration", ""]
        md += _table(LENGTH_HEADER, length_rows(report))
        md += ["", length_ratio_line(length)]
    ir = report["implicit_reward"]
    md += ["", "## Implicit reward (held-out pairs)", ""]
    if ir.get("available"):
        md += _table(IMPLICIT_HEADER, implicit_rows(ir))
        md += ["", f"beta = {fmt(ir['beta'])}, {ir['n']} pairs. Likelihood displacement "
                   f"(chosen log-prob below the base model's): {fmt(ir['likelihood_displacement'])}."]
    else:
        md += [ir["reason"]]
    md += ["", "## Labels", ""] + label_lines(report["labels"])
    tr = report["train"]
    md += ["", "## Training", ""]
    if tr.get("available"):
        md += _table(TRAIN_HEADER, [train_row(tr) + (f"[train_log.jsonl]({tr['log']})",)])
    else:
        md += [tr["reason"]]
    if figures:
        md += ["", "## Figures", ""] + [f"![{name}]({name}.png)" for name in figures]
    return "\n".join(md) + "\n"


def label_rows(labels: dict) -> list[tuple[str, str]]:
    """(statistic, value) rows of the labels section (shared with the HTML report)."""
    jh = labels["judge_human"]
    tri = labels["intransitivity"]
    return [
        ("pairs trained on, by source", ", ".join(f"{k}: {v}" for k, v in
                                                  labels["pairs_by_source"].items()) or "—"),
        ("pairs trained on, by the round that labeled them",
         ", ".join(f"round {k}: {v}" for k, v in (labels.get("pairs_by_round") or {}).items())
         or "—"),
        ("label rows, by source", ", ".join(f"{k}: {v}" for k, v in
                                            labels["labels_by_source"].items()) or "—"),
        ("candidate pairs / selected", f"{labels['candidates']} / {labels['selected']}"),
        ("routing", ", ".join(f"{k}: {v}" for k, v in labels["decisions"].items()) or "—"),
        ("dropped, by reason", ", ".join(f"{k}: {v}" for k, v in
                                         (labels.get("drop_reasons") or {}).items()) or "—"),
        ("share routed to people", pct(labels["routed_share"])),
        ("human budget used", f"{pct(labels['budget_used'])} of {labels['human_budget']}"),
        ("human votes / items / annotators",
         f"{labels['human_votes']} / {labels['human_items']} / {labels['annotators']}"),
        ("judges agree with the human majority (items sent to people)",
         judge_human_agreement(jh)),
        ("… each judge", ", ".join(judge_share(name, a)
                                   for name, a in (jh.get("by_judge") or {}).items()) or "—"),
        ("judge-human Cohen's kappa", kappa_text(jh)),
        ("judge calibration fitted on this round's labels (used from the next round; ECE on "
         "the same items)", calibration_text(labels.get("calibration"))),
        ("annotators' Krippendorff's alpha", fmt(labels["human_alpha"])),
        ("gold accuracy", f"{pct(labels['gold_accuracy'])} ({labels['gold_votes']} gold votes)"),
        ("intransitive triples, labels", f"{tri['labels']['intransitive']} of "
         f"{tri['labels']['triples']} ({pct(tri['labels']['share'])})"),
        ("intransitive triples, judge", f"{tri['judge']['intransitive']} of "
         f"{tri['judge']['triples']} ({pct(tri['judge']['share'])})"),
    ]


def kappa_text(jh: dict) -> str:
    """"0.12 (95% CI -0.35 – 0.58, bootstrap over the items)", or the bare kappa when it
    has no interval (older reports, or too few items)."""
    lo, hi = jh.get("kappa_lo"), jh.get("kappa_hi")
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return fmt(jh["kappa"])
    return f"{fmt(jh['kappa'])} (95% CI {fmt(lo)} – {fmt(hi)}, bootstrap over the items)"


def judge_share(name: str, a: dict) -> str:
    """"python: 69% of 16", flagged when below chance, or why there is no share."""
    if not a["items"]:
        return f"{name}: — (no verdict on these items)"
    return (f"{name}: {pct(a['agreement'])} of {a['items']}"
            + (" (below chance)" if a["agreement"] < 0.5 else ""))


def calibration_text(fits: dict | None) -> str:
    """"python: T 0.61, ECE 0.22 → 0.17 (16 pairs)" per judge, with the fit's note."""
    if not fits:
        return "—"
    return "; ".join(f"{name}: T {fmt(f['temperature'])}, ECE {fmt(f['ece_before'])} → "
                     f"{fmt(f['ece_after'])} ({f['n']} pairs)" + (f" ({f['note']})" if f["note"] else "")
                     for name, f in fits.items())


def label_lines(labels: dict) -> list[str]:
    if not labels.get("available"):
        return [labels["reason"]]
    out = _table(("statistic", "value"), label_rows(labels))
    return out + (["", labels["note"]] if labels.get("note") else [])
