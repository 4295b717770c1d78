"""Studio: Open OnDemand batch-connect apps that run from hpcstack's images.

One studio file (YAML) lists the apps; :func:`generate` writes one OOD app
directory per entry (``manifest.yml``, ``form.yml``, ``submit.yml.erb``,
``template/*.sh.erb``, ``view.html.erb`` for web apps) from the Jinja2 templates
under ``templates/``.  Container command lines come from the runtime adapters
(:mod:`hpcstack.runtime`), images and modules from the studio or modules site file.
"""

from hpcstack.studio.config import KINDS, Preset, Studio, StudioApp, load_studio, parse_studio
from hpcstack.studio.generate import generate

__all__ = ["KINDS", "Preset", "Studio", "StudioApp", "generate", "load_studio", "parse_studio"]
