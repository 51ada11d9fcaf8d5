"""``python -m augcl.train``: see augcl/train/cli.py (``--help``)."""
from augcl.train.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
