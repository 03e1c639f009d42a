"""Every error model_runtime raises on purpose shares one base, so a caller (the CLI's
`one_line_errors`) catches them all without naming each; each keeps its builtin base too."""
import importlib
import inspect
import pathlib

import click
import pytest
from click.testing import CliRunner

from paths import ROOT  # noqa: E402


def _runtime_exceptions():
    from model_runtime.errors import ModelRuntimeError

    found = []
    for path in sorted((ROOT / "model_runtime").glob("*.py")):
        module = importlib.import_module(f"model_runtime.{path.stem}")
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__
                    and obj is not ModelRuntimeError):
                found.append(obj)
    return found


def test_every_runtime_exception_derives_from_the_one_base():
    from model_runtime.errors import ModelRuntimeError

    classes = _runtime_exceptions()
    assert len(classes) >= 10
    assert [c.__qualname__ for c in classes if not issubclass(c, ModelRuntimeError)] == []


def test_builtin_bases_are_kept():
    from model_runtime.finetune import FinetuneError
    from model_runtime.loading import ModelNotFoundError
    from model_runtime.registry import UnknownModelError

    assert issubclass(FinetuneError, ValueError)
    assert issubclass(ModelNotFoundError, LookupError)
    assert issubclass(UnknownModelError, KeyError)
    assert str(UnknownModelError("no such model")) == "no such model"


@pytest.mark.parametrize("module, name", [
    ("model_runtime.schedulers", "UnknownSchedulerError"),
    ("model_runtime.devices", "DeviceUnavailableError"),
    ("evaluation.augment", "AugmentError"),
])
def test_cli_turns_each_base_into_one_error_line(module, name):
    from studio.cli.groups import one_line_errors

    exc = getattr(importlib.import_module(module), name)

    @click.command()
    @one_line_errors
    def boom():
        raise exc("the message")

    result = CliRunner().invoke(boom, [])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: the message"
