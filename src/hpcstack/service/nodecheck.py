"""``hpcstack doctor``'s checks, run by the service on its own node.

At start its problems go to the log (one warning each, with the fix); ``GET
/api/v1/health?deep=1`` returns every finding.  The build directory and cache looked
at are the service's own (its data directory), and the user is its account.
"""

from __future__ import annotations

import logging

from hpcstack.doctor import Inputs, Status, run_checks
from hpcstack.service.config import Settings
from hpcstack.service.models import NodeCheck

log = logging.getLogger("u2cb")


def inputs_for(settings: Settings) -> Inputs:
    return Inputs(munge_socket=settings.munge_socket, build_dir=settings.tmp_dir(),
                  build_variable="the data_dir setting", cache_dir=settings.data_dir / "cache",
                  cache_variable="the data_dir setting")


def node_checks(settings: Settings) -> list[NodeCheck]:
    return [NodeCheck(check=f.check, status=f.status.value, message=f.message, fix=f.fix)
            for f in run_checks(inputs_for(settings))]


def log_problems(settings: Settings) -> None:
    """Each problem as one warning line (at start, so an admin sees it in the journal)."""
    for finding in run_checks(inputs_for(settings)):
        if finding.status is not Status.OK:
            log.warning("node check: %s", finding.line())
