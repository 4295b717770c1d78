"""The Apptainer the other tests judge us by: Debian sid's 1.4, run as the test user."""

from __future__ import annotations


def test_apptainer_runs_as_the_ordinary_user(apptainer, user) -> None:
    out = apptainer.run(user, ["version"], check=True).stdout
    assert out.startswith("1.4."), out
    # The shim is on no default PATH: `--engine auto` keeps choosing the builtin engine.
    assert user.run(["sh", "-c", "command -v apptainer"]).returncode != 0
