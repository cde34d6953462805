"""User-facing errors: each message says what is wrong and what to do."""


class StarDeployError(Exception):
    """An error the CLI reports as one line, without a traceback."""


class WeightsError(StarDeployError):
    """A checkpoint or weight directory is missing, unreadable or of the wrong model."""


class ConfigError(StarDeployError):
    """Settings are inconsistent with each other or with the weights."""


class ArtifactError(StarDeployError):
    """An exported artefact directory or engine is missing, stale or incompatible."""


class BackendUnavailableError(StarDeployError):
    """A runtime (onnxruntime, TensorRT, CUDA) needed by the chosen backend is missing."""


class OutputError(StarDeployError):
    """An output path exists already, or cannot be written."""


class MemoryBudgetError(StarDeployError):
    """The chosen model, batch and device need more memory than is available."""
