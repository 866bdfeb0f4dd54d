"""Typed errors. Every error a user can cause says what went wrong and what to do about it.

The hierarchy is flat on purpose: callers catch `ByzerError` for "a user-facing problem" and the
CLI prints it as one line; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

from typing import Iterable


def _choices(values: Iterable[str]) -> str:
    values = sorted(set(values))
    return ", ".join(values) if values else "(none)"


class ByzerError(Exception):
    """Base of every error a user can cause and fix."""


class ConfigError(ByzerError, ValueError):
    """An option is unknown, missing or has a value of the wrong type or range."""


class UnknownOptionError(ConfigError):
    def __init__(self, where: str, key: str, valid: Iterable[str]):
        self.key = key
        self.valid = sorted(set(valid))
        super().__init__(f"unknown {where} option {key!r}; valid options: {_choices(self.valid)}")


class WorkspacePathError(ByzerError, PermissionError):
    """A path resolves outside the workspace's allowed roots."""


class ClusterError(ByzerError, RuntimeError):
    """The Ray cluster cannot be reached, started or stopped."""


class PluginError(ByzerError):
    """A model plugin is unknown, cannot be imported, or does not honour the contract."""


class UnknownPluginError(PluginError, KeyError):
    def __init__(self, name: str, known: Iterable[str]):
        self.name = name
        self.known = sorted(set(known))
        super().__init__(
            f"unknown pretrained_model_type {name!r}; known model types: {_choices(self.known)} "
            "(a third-party plugin registers itself in the 'byzer_like.models' entry-point group)"
        )

    def __str__(self) -> str:  # KeyError would quote the whole message
        return self.args[0]


class ModelDirError(ByzerError, FileNotFoundError):
    """A model directory is missing or does not hold a loadable model."""


class DeployError(ByzerError, RuntimeError):
    """A deployment could not be created, bound or removed."""


class DuplicateDeploymentError(DeployError):
    def __init__(self, udf_name: str):
        self.udf_name = udf_name
        super().__init__(
            f"a model named {udf_name!r} is already deployed; pass reconnect=True (SQL: reconnect=\"true\") "
            f"to use it as it is, or undeploy it first"
        )


class ModelNotDeployedError(DeployError, KeyError):
    def __init__(self, udf_name: str, deployed: Iterable[str]):
        self.udf_name = udf_name
        self.deployed = sorted(set(deployed))
        super().__init__(f"no model named {udf_name!r} is deployed; deployed models: {_choices(self.deployed)}")

    def __str__(self) -> str:
        return self.args[0]


class InferenceError(ByzerError, RuntimeError):
    """A model call failed."""


class InvalidRequestError(InferenceError, ValueError):
    """A request is wrong in itself (bad parameter, prompt too long); retrying will not help."""

    def __init__(self, message: str, *, code: str = "invalid_request", index: int | None = None):
        self.code = code
        self.index = index
        super().__init__(message)


class PromptTooLongError(InvalidRequestError):
    def __init__(self, message: str, index: int | None = None):
        super().__init__(message, code="prompt_too_long", index=index)


class BackPressureError(InferenceError):
    """The model's request queue is full: retry later, or deploy more workers."""


class RequestTimeoutError(InferenceError, TimeoutError):
    """A model call did not finish in time."""


class NotSupportedError(ByzerError, NotImplementedError):
    """The plugin or the current version does not offer this operation."""
