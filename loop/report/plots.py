"""Figures of the drift reports, as PNG bytes (matplotlib's Agg canvas, no pyplot state).

Each function takes report.json objects (and the train log) and returns
{name: png bytes}; a figure whose data is missing is left out.
"""

from __future__ import annotations

import io

from alignloop.report.lookup import get_path

COLORS = {"policy": "#1f77b4", "previous": "#ff7f0e", "base": "#7f7f7f",
          "reference": "#2ca02c"}


def _figure(width: float, height: float, ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


def _err(e: dict | None) -> tuple[float, float, float] | None:
    """(value, below, above) for an error bar; None when there is no value."""
    if not e or e.get("value") is None:
        return None
    v, lo, hi = e["value"], e.get("lo"), e.get("hi")
    return v, max(0.0, v - lo) if lo is not None else 0.0, max(0.0, hi - v) if hi is not None else 0.0


def _legend_below(fig, ax, ncols: int = 4) -> None:
    """The legend of `ax` under the figure, outside every axes, so it never covers data
    (constrained layout makes room for it)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", fontsize="small", frameon=False,
                   ncols=min(len(labels), ncols))


def _errorbars(ax, ys, estimates, *, color, label, horizontal=True):
    pts = [(y, _err(e)) for y, e in zip(ys, estimates, strict=True)]
    pts = [(y, e) for y, e in pts if e is not None]
    if not pts:
        return
    y, e = zip(*pts, strict=True)
    v = [x[0] for x in e]
    err = [[x[1] for x in e], [x[2] for x in e]]
    if horizontal:
        ax.errorbar(v, y, xerr=err, fmt="o", color=color, label=label, capsize=3)
    else:
        ax.errorbar(y, v, yerr=err, fmt="o-", color=color, label=label, capsize=3)


# --------------------------------------------------------------------------- one round


def _training(log: list[dict]) -> bytes | None:
    if not log:
        return None
    fig, axes = _figure(9, 2.6, 3)
    steps = [r.get("step", i + 1) for i, r in enumerate(log)]
    for ax, key, title, unit in zip(
            axes, ("loss", "rewards/margin", "rewards/accuracy"),
            ("DPO loss", "reward margin", "reward accuracy"),
            ("loss of the step's batch", "β·log-ratio, chosen − rejected", "share of the batch"),
            strict=True):
        ax.plot(steps, [r.get(key) for r in log], marker="." if len(log) < 40 else None)
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(unit)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _png(fig)


def _kl(report: dict) -> bytes | None:
    secs = [(name, report[key]) for name, key in
            (("reference", "kl_to_reference"), ("base", "kl_to_base"))
            if get_path(report, key, "available")]
    if not secs:
        return None
    fig, axes = _figure(9, 2.4, 2)
    for ax, unit, title in zip(axes, ("sequence", "per_token"), ("nats per response", "nats per token"),
                               strict=True):
        labels, y = [], 0
        for name, sec in secs:
            for est in ("k1", "k3"):
                _errorbars(ax, [y], [sec[est][unit]], color=COLORS[name],
                           label=None)
                labels.append(f"{name} ({est})")
                y += 1
        ax.set_yticks(range(len(labels)), labels)
        ax.axvline(0, color="black", lw=0.5)
        ax.set_title(f"KL(policy ‖ q), {title}")
        budget = get_path(report, "gate", "max_kl_to_base") or 0
        note = ""
        if unit == "sequence" and budget > 0:
            rows = [i for i, lab in enumerate(labels) if lab.startswith("base")]
            if rows:                          # the budget is on KL to base: drawn on its rows
                ax.vlines(budget, min(rows) - 0.4, max(rows) + 0.4, color="#d93025", lw=1,
                          ls="--")
                ax.set_xlim(right=max(ax.get_xlim()[1], budget * 1.08))
                note = f"\nred: the gate's budget, {budget:g}"
        ax.set_xlabel(f"{title} (95% intervals){note}")
        ax.set_ylabel("q (estimator)")
        ax.invert_yaxis()
    return _png(fig)


def _who(report: dict, name: str) -> str:
    """"previous (round 1's policy)": a model's legend entry, naming the previous policy
    where the report says which it is."""
    prev = get_path(report, "context", "previous")
    return f"{name} ({prev})" if name == "previous" and prev else name


def _label(name: str) -> str:
    """A slice name as a tick or legend label, shown as written: matplotlib reads text
    between two `$` as TeX math (and fails on most of it: `tier_$5_to_$10`)."""
    return (name or "(none)").replace("$", r"\$")


def _win_rates(report: dict) -> bytes | None:
    secs = [(name, report[f"win_rate_vs_{name}"]) for name in ("previous", "base")
            if get_path(report, f"win_rate_vs_{name}", "available")]
    if not secs:
        return None
    slices = sorted({s for _, sec in secs for s in sec["by_slice"]})
    rows = ["overall"] + slices
    fig, axes = _figure(7, 0.45 * len(rows) + 1.2)
    ax = axes[0]
    for i, (name, sec) in enumerate(secs):
        ests = [sec["overall"]] + [sec["by_slice"].get(s) for s in slices]
        _errorbars(ax, [r + 0.15 * (i - 0.5) for r in range(len(rows))], ests,
                   color=COLORS[name], label=f"vs {_who(report, name)}")
    ax.axvline(0.5, color="black", lw=0.7, ls="--")
    ax.set_yticks(range(len(rows)), [_label(s) for s in rows])
    ax.set_xlim(-0.03, 1.03)
    ax.invert_yaxis()
    ax.set_xlabel("win rate of this round's policy (ties ½), 95% interval")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    return _png(fig)


def _latent(report: dict) -> bytes | None:
    if not get_path(report, "latent_reward", "available"):
        return None
    lr = report["latent_reward"]
    models = [(m, lr["models"][m]) for m in ("base", "previous", "policy") if lr["models"].get(m)]
    slices = sorted({s for _, m in models for s in m["by_slice"]})
    fig, axes = _figure(max(5.0, 1.1 * len(slices) + 2), 3.4)
    ax, width = axes[0], 0.8 / len(models)
    for i, (name, m) in enumerate(models):
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(slices))]
        ests = [m["by_slice"].get(s) for s in slices]
        pts = [(x, _err(e)) for x, e in zip(xs, ests, strict=True) if _err(e)]
        if pts:
            ax.bar([p[0] for p in pts], [p[1][0] for p in pts], width,
                   yerr=[[p[1][1] for p in pts], [p[1][2] for p in pts]], capsize=2,
                   color=COLORS[name], label="this round" if name == "policy"
                   else _who(report, name))
    ax.set_xticks(range(len(slices)), [_label(s) for s in slices], rotation=20, ha="right")
    ax.axhline(0, color="black", lw=0.5)
    ax.set_ylabel("mean latent reward")
    ax.set_xlabel("slice (bars: 95% intervals over prompts)")
    _legend_below(fig, ax)
    return _png(fig)


def _length(report: dict) -> bytes | None:
    if not get_path(report, "length", "available"):
        return None
    length = report["length"]
    fig, axes = _figure(6, 3.2)
    for name, s in length["models"].items():
        h = s["histogram"]
        axes[0].stairs(h["counts"], h["edges"], color=COLORS.get(name), lw=1.5,
                       label=f"{name} (mean {s['mean_tokens']:.0f})")
    axes[0].set_xlabel("response tokens")
    axes[0].set_ylabel("responses")
    _legend_below(fig, axes[0])
    return _png(fig)


def _labels(report: dict) -> bytes | None:
    lab = report.get("labels")
    if not get_path(lab, "available") or not (lab["decisions"] or lab["pairs_by_source"]):
        return None
    fig, axes = _figure(8, 2.5, 2)
    for ax, key, title in ((axes[0], "decisions", "selected pairs, routed"),
                           (axes[1], "pairs_by_source", "pairs trained on, by source")):
        items = sorted(lab[key].items())
        ax.bar([k for k, _ in items], [v for _, v in items], color="#1f77b4")
        ax.set_title(title)
        ax.set_ylabel("pairs")
        ax.yaxis.get_major_locator().set_params(integer=True)
    return _png(fig)


def round_figures(report: dict, train_log: list[dict]) -> dict[str, bytes]:
    figs = {"training": _training(train_log), "kl": _kl(report), "win_rates": _win_rates(report),
            "latent_reward": _latent(report), "length": _length(report), "labels": _labels(report)}
    return {k: v for k, v in figs.items() if v is not None}


# --------------------------------------------------------------------------- across rounds


def _trend(reports: dict[int, dict], series: dict[str, tuple], title: str, ylabel: str, *,
           hline: float | None = None, dodge: float = 0.0) -> bytes | None:
    """One line per series; a series is (color, [path into the report to an estimate]).
    `dodge` > 0 spreads the series' points sideways (at most that far from the round in
    all) so that many series' intervals at one round do not hide each other."""
    ks = sorted(reports)
    fig, axes = _figure(6, 3.4)
    ax, drawn = axes[0], False
    step = dodge / max(len(series) - 1, 1)
    for i, (label, (color, path)) in enumerate(series.items()):
        ests = [get_path(reports[k], *path) for k in ks]
        ests = [{"value": e} if isinstance(e, (int, float)) else e for e in ests]
        xs = [k + (i - (len(series) - 1) / 2) * step for k in ks]
        if any(_err(e) for e in ests):
            _errorbars(ax, xs, ests, color=color, label=label, horizontal=False)
            drawn = True
    if not drawn:
        return None
    if hline is not None:
        ax.axhline(hline, color="black", lw=0.7, ls="--")
    ax.set_xticks(ks)
    ax.set_title(title)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    _legend_below(fig, ax, ncols=5)
    return _png(fig)


def run_figures(reports: dict[int, dict]) -> dict[str, bytes]:
    floors = [get_path(r, "thresholds", "agreement_floor") for r in reports.values()]
    floor = next((f for f in reversed(floors) if isinstance(f, (int, float)) and f > 0), None)
    figs = {
        "kl": _trend(reports, {"KL to base": (COLORS["base"], ("kl_to_base", "k1", "sequence")),
                               "KL to reference": (COLORS["reference"],
                                                   ("kl_to_reference", "k1", "sequence"))},
                     "KL divergence of the policy", "nats per response (k1)"),
        "win_rates": _trend(reports, {
            "vs previous": (COLORS["previous"], ("win_rate_vs_previous", "overall")),
            "vs base": (COLORS["base"], ("win_rate_vs_base", "overall"))}, "Judge win rate",
            "win rate (ties ½)", hline=0.5),
        "length": _trend(reports, {
            "policy": (COLORS["policy"], ("length", "models", "policy", "mean_tokens")),
            "base": (COLORS["base"], ("length", "models", "base", "mean_tokens"))},
            "Response length", "mean tokens"),
    }
    slices = sorted({s for r in reports.values()
                     for s in (get_path(r, "latent_reward", "models", "policy", "by_slice") or {})})
    cmap = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#17becf", "#bcbd22"]
    figs["latent_reward"] = _trend(reports, {
        "overall": ("black", ("latent_reward", "models", "policy", "overall")),
        **{_label(s): (cmap[i % len(cmap)], ("latent_reward", "models", "policy", "by_slice", s))
           for i, s in enumerate(slices)}}, "Latent reward per slice (simulated ground truth)",
        "mean latent reward", dodge=0.4)
    figs["agreement"] = _trend({k: _agreement(r) for k, r in reports.items()}, {
        "annotators' alpha": ("#9467bd", ("alpha",)),
        "judge-human kappa": ("#8c564b", ("kappa",)),
        "share judge = human majority": ("#17becf", ("share",))},
        "Label agreement (chance: α, κ 0, share ½; dashed: floor)", "agreement", hline=floor,
        dodge=0.1)
    return {k: v for k, v in figs.items() if v is not None}


def _agreement(report: dict) -> dict:
    """A round's agreement figures as estimates: the judge-human kappa and share with their
    95% intervals where the report has them (bootstrap and Wilson), alpha without one."""
    jh = get_path(report, "labels", "judge_human") or {}
    return {"alpha": {"value": get_path(report, "labels", "human_alpha")},
            "kappa": {"value": jh.get("kappa"), "lo": jh.get("kappa_lo"), "hi": jh.get("kappa_hi")},
            "share": {"value": jh.get("agreement"), "lo": jh.get("agreement_lo"),
                      "hi": jh.get("agreement_hi")}}
