"""hpcstack: run an HPC center's software stack in containers."""

__version__ = "0.1.0"
