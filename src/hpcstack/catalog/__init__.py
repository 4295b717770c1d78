"""The image catalog: base and app images per architecture, from one YAML file.

Pure core: :mod:`.model` (the catalog file), :mod:`.expand` (the variant
matrix, references and tags checked), :mod:`.naming` (the tag rule),
:mod:`.render` and :mod:`.hpccm_recipes` (a .def and a Dockerfile per image).
I/O: :mod:`.build` (through the builder or Slurm, rebuilding only what
changed) and :mod:`.publish` (a modules site file, then modules deploy).
See ``docs/catalog.md``.
"""

from hpcstack.catalog.expand import AppImage, BaseImage, Expanded, expand
from hpcstack.catalog.model import Catalog, load_catalog, parse_catalog
from hpcstack.catalog.render import Recipe, render_image

__all__ = ["AppImage", "BaseImage", "Catalog", "Expanded", "Recipe", "expand", "load_catalog",
           "parse_catalog", "render_image"]
