"""Lightning callbacks and plugins of AutoNorm."""

from autonorm.callbacks.checkpoint_io import AtomicCheckpointIO, RunRecord, data_record
from autonorm.callbacks.guards import NonFiniteLossError, NonFiniteLossGuard
from autonorm.callbacks.norm_logging import GradNormRecorder, NormStateLogger
from autonorm.callbacks.resume import AutoPathsCallback, RNGStateCallback, StepCheckpoint, TrainLoaderStateCallback
from autonorm.callbacks.summary import ModelSummary, with_summary
from autonorm.callbacks.temperature import TemperatureScheduler
from autonorm.callbacks.time_to_accuracy import TimeToAccuracy

__all__ = [
    "AtomicCheckpointIO",
    "AutoPathsCallback",
    "GradNormRecorder",
    "ModelSummary",
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "NormStateLogger",
    "RNGStateCallback",
    "RunRecord",
    "data_record",
    "StepCheckpoint",
    "TrainLoaderStateCallback",
    "TemperatureScheduler",
    "TimeToAccuracy",
    "with_summary",
]
