"""`python -m cityloop.cli` runs the CLI."""

from cityloop.cli import app

app()
