"""The whole config: one section per YAML top-level key, each a frozen dataclass in its own module."""

from __future__ import annotations

from dataclasses import dataclass, field

from alignloop.config.data import DataConfig
from alignloop.config.generation import GenerationConfig
from alignloop.config.labeling import LabelingConfig
from alignloop.config.loop import LoopConfig
from alignloop.config.model import ModelConfig, ReferenceConfig
from alignloop.config.report import ReportConfig
from alignloop.config.tracking import TrackingConfig
from alignloop.config.train import TrainConfig


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The starting policy."""
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    """The DPO reference."""
    data: DataConfig = field(default_factory=DataConfig)
    """Static preference pairs and tokenisation limits."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The DPO trainer."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    """Sampling candidates from a policy."""
    labeling: LabelingConfig = field(default_factory=LabelingConfig)
    """Judges, pair selection, routing to people, soft labels."""
    loop: LoopConfig = field(default_factory=LoopConfig)
    """Rounds, prompts, failure slices, replay, evaluation, gates."""
    report: ReportConfig = field(default_factory=ReportConfig)
    """Drift reports: alert thresholds, bootstrap size, examples shown."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Experiment trackers (TensorBoard, MLflow, wandb, trackio); none by default."""
