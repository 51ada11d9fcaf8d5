"""The two ways a training run stops early (both end as one line on stderr, never a traceback)."""


class ConfigError(ValueError):
    """A bad command line or input (unknown data, missing path, batch size too large, ...): exit code 2."""


class TrainingError(RuntimeError):
    """Training itself failed (e.g. the loss became non-finite): exit code 1."""
