"""``python -m hpcstack`` is the ``hpcstack`` command."""

from hpcstack.cli.main import main

main()
