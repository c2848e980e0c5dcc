"""launch.cli.prefer_onednn: oneDNN on by default, the user's choice kept, too late = warning."""

import os
import subprocess
import sys

import pytest

SNIPPET = """
import os, sys
{before}
from launch import cli
print(cli.prefer_onednn(), os.environ.get("TF_ENABLE_ONEDNN_OPTS"))
"""


def _run(before: str = "", **env) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    environ.update(env)
    done = subprocess.run(
        [sys.executable, "-c", SNIPPET.format(before=before)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "env, expected",
    [({}, "True 1"), ({"TF_ENABLE_ONEDNN_OPTS": "0"}, "False 0"), ({"TF_ENABLE_ONEDNN_OPTS": "1"}, "True 1")],
)
def test_sets_oneDNN_unless_the_user_chose(env, expected):
    assert _run(**env) == expected


def test_after_tensorflow_is_imported_it_changes_nothing():
    # TensorFlow has read the variable already: setting it now would only mislead.
    assert _run(before="import tensorflow") == "False None"
