"""The short chaos run (benchmarks/chaos.py has the long one): a tiny deterministic run is
SIGKILLed during a checkpoint save and SIGTERMed during validation, restarted each time
with the same command, and ends bit-identical to an uninterrupted run."""

import signal

import pytest

from benchmarks import chaos
from preprocessing import tiny_records


@pytest.mark.timeout(600)
def test_killed_during_a_save_and_stopped_during_validation_ends_bit_identical(tmp_path):
    records = str(tmp_path / "records")
    tiny_records.write_records(records, {"train": 32, "val": 32}, size=32)
    summary = chaos.chaos(
        records, str(tmp_path / "chaos"), [("save", signal.SIGKILL), ("validation", signal.SIGTERM)]
    )
    print(summary)
    # chaos() asserts the digest, the exit statuses and the stop bound; here: both faults
    # were dealt (a run that finished first would have escaped them).
    assert summary["faults"] == 2 and summary["attempts"] == 3, summary
