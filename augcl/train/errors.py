"""The two ways a training run stops early (both end as one line on stderr, never a traceback), one-line
warnings, and the checks of the optional dependencies (the ``train`` extra: scikit-learn, torchvision;
matplotlib is checked in outputs.py)."""
import sys

PROG = "python -m augcl.train"


class ConfigError(ValueError):
    """A bad command line or input (unknown data, missing path, batch size too large, ...): exit code 2."""


class TrainingError(RuntimeError):
    """Training itself failed (e.g. the loss became non-finite): exit code 1."""


def warn(message: str) -> None:
    """One line on stderr, ``python -m augcl.train: warning: ...`` (not ``warnings.warn``: that prints the
    source line too, and a filter could hide it)."""
    print(f"{PROG}: warning: {' '.join(message.split())}", file=sys.stderr, flush=True)


def require_torchvision(what: str):
    """``import torchvision``, or a ConfigError naming the option that needs it (it is an optional dependency,
    in the ``train`` extra)."""
    try:  # imported here, not at the top: only some options need it
        import torchvision
    except ImportError as exc:
        raise ConfigError(f"{what} needs torchvision, which is not installed ({exc}); "
                          "pip install torchvision (or augcl[train])") from None
    return torchvision


def sklearn_reason():
    """Why scikit-learn cannot be used (not installed or broken), or None when it can."""
    try:  # imported here, not at the top: an optional dependency (the ``train`` extra)
        import sklearn.datasets  # noqa: F401
        import sklearn.linear_model  # noqa: F401
        import sklearn.model_selection  # noqa: F401
    except ImportError as exc:
        return f"scikit-learn is not importable ({exc})"
    return None


def require_sklearn(what: str) -> None:
    """ConfigError naming ``what`` needs scikit-learn unless it can be imported."""
    reason = sklearn_reason()
    if reason:
        raise ConfigError(f"{what} needs scikit-learn: {reason}; pip install scikit-learn (or augcl[train])")
