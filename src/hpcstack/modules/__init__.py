"""Container modules: ``module load APP`` puts wrappers on PATH that run the image.

Pure core: :mod:`.config` (the site file model), :mod:`.render` (modulefiles,
wrappers, default files from the Jinja2 templates in ``templates/``).  I/O:
:mod:`.image` (reading SIFs at deploy time) and :mod:`.deploy` (deploy, list,
remove, check, Lmod spider cache) and :mod:`.mpicheck` (each MPI app under each
promised launcher, as Slurm jobs).  See ``docs/modules.md``.
"""

from hpcstack.modules.config import App, Site, load_site, parse_site
from hpcstack.modules.deploy import Deployed, Problem, Report, check, deploy, listing, remove
from hpcstack.modules.mpicheck import Trial, check_mpi

__all__ = ["App", "Deployed", "Problem", "Report", "Site", "Trial", "check", "check_mpi",
           "deploy", "listing", "load_site", "parse_site", "remove"]
