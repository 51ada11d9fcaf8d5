"""What the training-driver tests read back from a run (tests/test_train*.py): its metrics.json and log.csv, and the
exit code and message of a run that must stop with a one-line error."""
import csv
import json
import os

import pytest

from augcl.train import main


def metrics(out):
    """The run folder's metrics.json as a dict."""
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


def log_rows(out):
    """The run folder's log.csv as a list of dicts (one per logged epoch)."""
    with open(os.path.join(out, "log.csv")) as f:
        return list(csv.DictReader(f))


def exit_code(argv, capsys):
    """Run main(argv), expecting a SystemExit; returns (code, stderr)."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, capsys.readouterr().err
