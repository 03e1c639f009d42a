"""The `medisyn` command line: thin wrappers over documented library calls.

Each command group lives in its own module of this package (study, analysis, generate,
model, eval, experiment, generalist, app, demo) and registers itself on the groups in `groups`. Heavy imports (torch, diffusers, gradio) happen
inside command bodies so `medisyn --help` is instant.
"""
from __future__ import annotations

import importlib

from studio.cli.groups import cli, one_line_errors  # noqa: F401  (the entry points others import)

_COMMAND_MODULES = (
    "studio.cli.study",
    "studio.cli.analysis",
    "studio.cli.generate",
    "studio.cli.model",
    "studio.cli.app",
    "studio.cli.demo",
    "studio.cli.eval",
    "studio.cli.experiment",
    "studio.cli.generalist",
)


def _register() -> None:
    for name in _COMMAND_MODULES:
        importlib.import_module(name)


_register()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
