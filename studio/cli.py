"""The `medisyn` command line: thin wrappers over documented library calls.

Each command group lives in its own module (cli_study, cli_analysis, cli_generate,
cli_model, cli_app) and registers itself on the groups defined here. Heavy imports
(torch, diffusers, gradio) happen inside command bodies so `medisyn --help` is instant.
"""
from __future__ import annotations

import functools
import importlib
import sqlite3

import click


def one_line_errors(fn):
    """Turn the library's expected failures into click's one-line error + exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from studies.errors import StudyError
        from studies.imaging import ImageError

        try:
            return fn(*args, **kwargs)
        except (StudyError, ImageError, FileNotFoundError) as exc:
            raise click.ClickException(str(exc)) from None
        except sqlite3.DatabaseError as exc:
            raise click.ClickException(f"database error: {exc}") from None
        except OSError as exc:
            raise click.ClickException(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="medisyn-studio")
def cli() -> None:
    """MediSyn Studio: text-guided medical image synthesis and blinded reader studies."""


@cli.group()
def study() -> None:
    """Create, audit, run, export and analyse blinded reader studies."""


@cli.group()
def model() -> None:
    """Train and inspect diffusion models."""


_COMMAND_MODULES = (
    "studio.cli_study",
    "studio.cli_analysis",
    "studio.cli_generate",
    "studio.cli_model",
    "studio.cli_app",
    "studio.cli_demo",
    "studio.cli_eval",
    "studio.cli_experiment",
    "studio.cli_generalist",
)


def _register() -> None:
    for name in _COMMAND_MODULES:
        importlib.import_module(name)


_register()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
