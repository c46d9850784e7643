"""The `report:` section of the config schema: drift-report alert thresholds and sizes.
Kept beside config.py like config_labeling.py; `Config.report` is a `ReportConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignloop.config.base import require


@dataclass(frozen=True)
class ReportConfig:
    alert_kl_to_reference: float = 0.0
    """Alert when a round's KL(policy || reference) (k1 estimate, nats per response) is above
    this. 0: no KL alert."""
    length_blowup: float = 1.5
    """Alert when the policy's mean response length is more than this many times the
    previous round's (round 0: the base model's). 0: off."""
    alert_slice_drop: float = 0.05
    """Alert on a slice whose win rate against the previous policy is below 0.5 - this, or
    whose mean latent reward fell by more than this from the previous round. 0: off."""
    min_slice_samples: int = 8
    """Slices with fewer comparisons (or latent-reward samples) never raise a regression
    alert: their estimates are too noisy. The report lists them as skipped checks."""
    alert_win_rate_vs_base: float = 0.5
    """Alert when the judge's win rate of the policy against the base model is below this
    with its whole 95% interval below it too: the policy loses to the model it started
    from (e.g. after likelihood displacement). 0: off."""
    agreement_floor: float = 0.4
    """Alert when the annotators' Krippendorff's alpha, or the judge-human Cohen's kappa,
    is below this. 0: off."""
    n_boot: int = 1000
    """Bootstrap replicates behind every 95% interval (resampling prompts)."""
    examples: int = 8
    """Example prompts in report.html, previous and current responses side by side."""
    seed: int = 0
    """Seed of the bootstrap and of the choice of example prompts."""

    def __post_init__(self) -> None:
        require(self.alert_kl_to_reference >= 0, "alert_kl_to_reference", "must be >= 0 (0: off)")
        require(self.length_blowup == 0 or self.length_blowup > 1, "length_blowup",
                 "must be > 1 (a ratio), or 0 to turn the alert off")
        require(0 <= self.alert_slice_drop < 0.5, "alert_slice_drop", "must be in [0, 0.5)")
        require(0 <= self.alert_win_rate_vs_base <= 1, "alert_win_rate_vs_base",
                "must be in [0, 1] (0: off)")
        require(self.min_slice_samples >= 1, "min_slice_samples", "must be >= 1")
        require(-1 <= self.agreement_floor <= 1, "agreement_floor", "must be in [-1, 1]")
        require(self.n_boot >= 100, "n_boot", "must be >= 100 (fewer make a 95% interval noise)")
        require(self.examples >= 0, "examples", "must be >= 0")
