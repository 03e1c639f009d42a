"""medisyn CLI commands: study."""
from studio.cli import cli, study, model  # noqa: F401  (groups these commands attach to)
