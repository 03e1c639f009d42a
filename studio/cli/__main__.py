"""`python -m studio.cli` runs the `medisyn` command."""
from studio.cli import main

main()
