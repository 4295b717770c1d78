"""``python -m hpcstack`` is the ``hpcstack`` command."""

from hpcstack.cli import main

main()
