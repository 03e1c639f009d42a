"""The one base of every error model_runtime raises on purpose.

Callers catch `ModelRuntimeError` (the CLI turns it into one `Error:` line); each subclass also
keeps the builtin base its callers may already catch (ValueError, LookupError, RuntimeError).
"""
from __future__ import annotations


class ModelRuntimeError(Exception):
    """Bad input or an unusable model, device or output; the message says which and why."""


class ModelNotFoundError(ModelRuntimeError, LookupError):
    """Neither a local diffusers directory nor a Hub id present in the local cache."""
