"""``python -m augcl.train``: see augcl/train/cli.py (``--help``)."""
import augcl

if getattr(augcl, "__file__", None) is None:
    # A folder named augcl without __init__.py (a clone's root, say) in the working directory or on PYTHONPATH
    # made `augcl` a namespace package; augcl.train still imports through an editable install's import hook, so
    # the run would train and only fail at its end, on augcl.__version__. Say so before any work is done.
    raise SystemExit(
        f"augcl resolves to the folder {', '.join(augcl.__path__)}, which has no __init__.py and hides the installed "
        "package: run from another directory, or reinstall with `pip install --no-build-isolation -e .`")

from augcl.train.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
