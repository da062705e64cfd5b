"""``python -m app`` runs the ``telltale`` CLI."""

from app.cli import main

main()
