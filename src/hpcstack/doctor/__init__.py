"""``hpcstack doctor``: everything a node needs for hpcstack, one line per problem.

:mod:`~hpcstack.doctor.logic` decides (pure); :mod:`~hpcstack.doctor.probe` looks.
The U2CB service runs the same checks at start and in ``GET /api/v1/health?deep=1``.
"""

from hpcstack.doctor.logic import Finding, Status
from hpcstack.doctor.probe import CHECKS, Inputs, run_checks

__all__ = ["CHECKS", "Finding", "Inputs", "Status", "run_checks"]
