"""``python -m goatclaw`` runs the command-line interface."""

from goatclaw.cli import main

main()
