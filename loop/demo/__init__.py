"""The demo task: sentiment-and-brevity control for a shop's chat assistant.

- `pairs`: template-written preference pairs (`builtin:demo-pairs`), for the
  trainer's tests and the first `make demo` step.
- `prompts`: the prompt pool (several hundred prompts in tagged slices, split
  into training and held-out evaluation prompts).
- `panel`: the simulated annotators and their latent utility (the ground truth
  reports show next to what the judges said).
"""

from alignloop.demo.pairs import BUNDLED_PATH, HARD_SLICES, SLICES, static_pairs, write_static_pairs

__all__ = ["BUNDLED_PATH", "HARD_SLICES", "SLICES", "static_pairs", "write_static_pairs"]
