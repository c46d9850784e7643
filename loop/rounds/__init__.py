"""The round driver: `Loop(config, run_dir).run()` runs or resumes the hybrid loop
(`loop`), over a run directory whose `state.json` records what is done (`state`)."""

from alignloop.rounds.loop import Loop

__all__ = ["Loop"]
