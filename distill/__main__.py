"""``python -m distill`` runs the CLI."""

from distill.cli import main

main()
