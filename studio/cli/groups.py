"""The `medisyn` command groups every command module attaches to, and the one error rule.

Kept apart from `studio.cli`'s `__init__` so that the modules `studio.cli.study` and
`studio.cli.model` do not shadow the groups of the same name.
"""
from __future__ import annotations

import functools
import sqlite3

import click


def one_line_errors(fn):
    """Turn the library's expected failures (each package's one error base) into click's
    one-line error + exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from evaluation.errors import EvaluationError
        from model_runtime.errors import ModelRuntimeError
        from studies.errors import StudyError
        from studies.imaging import ImageError

        try:
            return fn(*args, **kwargs)
        except (StudyError, ImageError, ModelRuntimeError, EvaluationError, FileNotFoundError) as exc:
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
