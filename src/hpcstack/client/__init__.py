"""The ``u2cb`` command: the build service's client, with the center's verbs."""
