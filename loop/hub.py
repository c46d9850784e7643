"""Hugging Face artifacts out of a run: a round's policy to the Hub, the pairs as a dataset.

    push_files(run_dir, k, merged)   {path in the repo: local file}: what `push` uploads
    push(run_dir, k, repo, ...)      uploads them with huggingface_hub (`alignloop push`)
    preference_rows(pairs)           Pair records -> TRL preference rows
    export_pairs(run_dir, out)       every round's pairs -> a `datasets.Dataset` on disk
                                     (`alignloop export-pairs`)

A round's `policy/` is full weights, or (LoRA) an adapter on the previous round's policy.
Only an adapter whose base is itself on the Hub is useful there alone; any other is pushed
as its merged weights (`--merged`, built into `policy/merged/` if missing). Every check
happens before anything is uploaded or written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from alignloop import artifacts as A
from alignloop.cards import _HUB_ID, adapter_base, model_card
from alignloop.errors import AlignloopError
from alignloop.logs import datasets_bars
from alignloop.outputs import check_not_in_run
from alignloop.records import Pair

NOT_PUSHED = ("merged", "alignloop_base.json", "README.md")
"""Entries of `policy/` never uploaded as they are: the merged cache (uploaded only with
--merged, instead of the adapter), the local base record, and the card (rewritten)."""


class HubError(AlignloopError, ValueError):
    """A push or export that cannot be done as asked (missing round, policy, ...)."""


def _run_config(run_dir: Path):
    from alignloop.config import load_config

    if not (run_dir / "config.yaml").is_file():
        raise HubError(f"{run_dir} is not a run directory: no config.yaml")
    return load_config(run_dir / "config.yaml")


def _policy_dir(run_dir: Path, k: int) -> Path:
    if not run_dir.is_dir():
        raise HubError(f"run directory not found: {run_dir}")
    policy = A.round_dir(run_dir, k) / A.POLICY
    if not A.round_dir(run_dir, k).is_dir():
        rounds = sorted(p.name for p in run_dir.glob("round_*") if p.is_dir())
        raise HubError(f"{run_dir} has no round {k} (rounds: {', '.join(rounds) or 'none'})")
    if not (policy.is_dir() and any(policy.glob("*.safetensors"))):
        raise HubError(f"round {k} of {run_dir} has no trained policy ({policy} is missing or "
                       "has no weights: has its train stage finished?)")
    return policy


def push_files(run_dir: str | Path, k: int, *, merged: bool = False) -> dict[str, Path]:
    """{path in the Hub repo: local file} for round k's policy, README.md included (written
    to a temporary file for a merged push). HubError for a missing round or policy, or an
    adapter whose base is not on the Hub pushed without `merged`."""
    run_dir = Path(run_dir)
    policy = _policy_dir(run_dir, k)
    cfg = _run_config(run_dir)
    is_adapter = (policy / "alignloop_base.json").is_file()
    if is_adapter and not merged:
        base = adapter_base(policy)
        if base.startswith("builtin:") or Path(base).exists() or not _HUB_ID.match(base):
            raise HubError(f"round {k}'s policy is a LoRA adapter on {base}, which is not a "
                           "Hugging Face Hub model: push it with --merged (its full weights)")
    source = policy
    if is_adapter and merged:
        from alignloop.models import merged_model_dir

        source = Path(merged_model_dir(str(policy)))
    # a symlink is not pushed: its target may lie anywhere (a token file, say)
    files = {str(p.relative_to(source)): p for p in sorted(source.rglob("*"))
             if p.is_file() and not p.is_symlink()
             and p.relative_to(source).parts[0] not in NOT_PUSHED}
    from alignloop.rounds.state import read_state

    state = read_state(run_dir / A.RUN_STATE) if (run_dir / A.RUN_STATE).exists() else {}
    reference = state.get("rounds", {}).get(str(k), {}).get("reference", cfg.model.name)
    card = Path(tempfile.mkdtemp(prefix="alignloop-card-")) / "README.md"
    card.write_text(model_card(run_dir, k, cfg, reference=reference, merged=merged and is_adapter))
    files["README.md"] = card
    return files


def push(run_dir: str | Path, k: int, repo: str, *, merged: bool = False, private: bool = False,
         token: str | None = None) -> str:
    """Upload round k's policy (`push_files`) to the Hub model repo `repo` (created if
    needed) in one commit; returns the commit URL."""
    from huggingface_hub import HfApi

    files = push_files(run_dir, k, merged=merged)
    api = HfApi(token=token)
    try:
        with tempfile.TemporaryDirectory(prefix="alignloop-push-") as tmp:
            for name, path in files.items():      # one folder: one commit, one upload call
                (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, Path(tmp) / name)
            api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
            info = api.upload_folder(folder_path=tmp, repo_id=repo, repo_type="model",
                                     commit_message=f"alignloop: round {k} policy"
                                                    + (" (merged)" if merged else ""))
    finally:
        shutil.rmtree(files["README.md"].parent, ignore_errors=True)   # the card's temp dir
    return str(getattr(info, "commit_url", info))


def preference_rows(pairs: list[Pair]) -> list[dict]:
    """TRL preference rows: `prompt`/`chosen`/`rejected` (plain text, or, if any prompt is
    chat messages, TRL's conversational format for every row: prompt messages, and one
    assistant message each for chosen and rejected) plus p_chosen, weight, n_votes, source,
    slice, round and pair_id."""
    chat = any(p.is_chat for p in pairs)
    rows = []
    for p in pairs:
        prompt, chosen, rejected = p.prompt, p.chosen, p.rejected
        if chat:
            prompt = p.prompt if p.is_chat else [{"role": "user", "content": p.prompt}]
            chosen = [{"role": "assistant", "content": p.chosen}]
            rejected = [{"role": "assistant", "content": p.rejected}]
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                     "p_chosen": float(p.p_chosen), "weight": float(p.weight),
                     "n_votes": int(p.n_votes), "source": p.source, "slice": p.slice,
                     "round": int(p.round), "pair_id": p.pair_id})
    return rows


def run_pairs(run_dir: Path) -> list[Pair]:
    """Every pair a run trained on, once: each round's pairs.parquet in round order, a
    replayed pair kept from the round that made it (its `round`)."""
    from alignloop.data import read_pairs_parquet

    seen: set[str] = set()
    out = []
    rounds = sorted(p for p in run_dir.glob("round_*") if (p / A.PAIRS).is_file())
    for rdir in rounds:
        for p in read_pairs_parquet(rdir / A.PAIRS):
            if p.pair_id not in seen:
                seen.add(p.pair_id)
                out.append(p)
    return out


def content_dataset(rows: list[dict]):
    """A `datasets.Dataset` of the rows, fingerprinted from their content (not at random):
    the same rows give the same files."""
    import datasets

    fingerprint = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]
    return datasets.Dataset(datasets.Dataset.from_list(rows)._data, fingerprint=fingerprint)


def export_pairs(run_dir: str | Path, out: str | Path, *, force: bool = False) -> int:
    """Write every pair of the run (`run_pairs`) as a `datasets.Dataset` to `out`
    (`save_to_disk`); returns the number of rows. A non-empty `out` is refused unless
    `force`."""
    run_dir, out = Path(run_dir), Path(out)
    if not run_dir.is_dir():
        raise HubError(f"run directory not found: {run_dir}")
    if out.resolve() == run_dir.resolve() or out.resolve() in run_dir.resolve().parents:
        # --force replaces `out` whole: it would delete the run it exports
        raise HubError(f"--out {out} is the run directory or holds it; give another path")
    check_not_in_run(out)                       # another run's round, say
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise HubError(f"{out} exists and is not empty: pass --force to replace it")
    pairs = run_pairs(run_dir)
    if not pairs:
        raise HubError(f"{run_dir} has no pairs yet (no round_*/{A.PAIRS})")
    ds = content_dataset(preference_rows(pairs))
    tmp = out.with_name(f".{out.name}.tmp-export")
    shutil.rmtree(tmp, ignore_errors=True)
    with datasets_bars():
        ds.save_to_disk(str(tmp))
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    tmp.rename(out)
    return len(ds)
