"""Apptainer/Singularity definition files: parse, validate, render (pure, no I/O).

``parse`` returns only definitions that pass ``check``; ``render`` writes the
canonical text, and ``parse(render(d)) == d`` for every valid definition.
"""

from hpcstack.deffile.check import BOOTSTRAP_AGENTS, check, validate
from hpcstack.deffile.model import (
    DefFileError,
    Definition,
    FilesSection,
    FileTransfer,
    Script,
    Stage,
)
from hpcstack.deffile.parser import parse
from hpcstack.deffile.render import render

__all__ = [
    "BOOTSTRAP_AGENTS",
    "DefFileError",
    "Definition",
    "FileTransfer",
    "FilesSection",
    "Script",
    "Stage",
    "check",
    "parse",
    "render",
    "validate",
]
