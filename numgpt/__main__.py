"""``python -m numgpt ...`` runs the ``numgpt`` command."""

from .cli import run

run()
