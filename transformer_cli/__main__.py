"""`python -m transformer_cli` runs the tfx CLI."""

from transformer_cli.cli.app import main

main()
