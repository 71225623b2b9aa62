"""Training: optimisers and schedules, resumable checkpoints and progress reporting."""

from custom_components.training.attach import Attach
from custom_components.training.autocast import AutocastInferer
from custom_components.training.checkpoint import ResumableCheckpoint
from custom_components.training.distributed import DistributedReport, validation_sampler
from custom_components.training.seeding import EpochSeed
from custom_components.training.progress import TrainingProgress, plot_training_curve
from custom_components.training.validation import OptionalValidation
from custom_components.training.schedules import PlateauSchedule, PolySchedule, build_optimizer, build_schedule
