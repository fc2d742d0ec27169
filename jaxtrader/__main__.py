"""`python -m jaxtrader` runs the CLI."""

from jaxtrader.cli import main

main()
