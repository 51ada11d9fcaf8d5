"""The two ways a training run stops early (both end as one line on stderr, never a traceback)."""


class ConfigError(ValueError):
    """A bad command line or input (unknown data, missing path, batch size too large, ...): exit code 2."""


class TrainingError(RuntimeError):
    """Training itself failed (e.g. the loss became non-finite): exit code 1."""


def require_torchvision(what: str):
    """``import torchvision``, or a ConfigError naming the option that needs it (it is an optional dependency,
    in the ``train`` extra)."""
    try:
        import torchvision
    except ImportError as exc:
        raise ConfigError(f"{what} needs torchvision, which is not installed ({exc}); "
                          "pip install torchvision (or augcl[train])") from None
    return torchvision
