"""Container modules: ``module load APP`` puts wrappers on PATH that run the image.

Pure core: :mod:`.config` (the site file model), :mod:`.render` (modulefiles,
wrappers, default files from the Jinja2 templates in ``templates/``).  I/O:
:mod:`.image` (reading SIFs at deploy time) and :mod:`.deploy` (deploy, list,
remove, check, Lmod spider cache).  See ``docs/modules.md``.
"""

from hpcstack.modules.config import App, Site, load_site, parse_site
from hpcstack.modules.deploy import Deployed, Problem, Report, check, deploy, listing, remove

__all__ = ["App", "Deployed", "Problem", "Report", "Site", "check", "deploy", "listing",
           "load_site", "parse_site", "remove"]
