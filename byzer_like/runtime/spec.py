"""What a deployment is: one `DeploySpec`, built once from the user's options and handed down.

Every face builds a deployment the same way: SQL's `run command as LLM.`` where action="infer" ...`,
`ByzerLLM.deploy(...)`, `byzer-like deploy ...`. The spec is checked completely here (plugin, options,
model directory) before anything starts, then given to the serving layer as it is, the way Ray Serve
LLM hands its server an `LLMConfig`.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from dataclasses import replace as _replace
from typing import Any, Callable, Mapping

from ..catalog import Catalog
from ..config import DeployOptions, SetupConfig
from ..errors import ConfigError, own_keys
from ..plugins import registry
from ..tasks import split_model_type
from ..workspace import Workspace

# `modelTable` may name a table of the caller's SQL session (`load model.`<dir>` as m`): the caller
# passes a function that gives its model directory, or None when it has no table of that name
SessionModels = Callable[[str], "str | None"]
# import paths of the plugins byzer-like ships: they read only the keys they declare
BUILT_IN = ("byzer_like.", "byzer_like_models.")


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's weights are: `model_dir` (a Hugging Face directory), plus `adapter_dir` when
    the reference is a LoRA adapter over that base model. `ref` is what was asked for (a registered one
    as `name@vN`); `model_type` is the registry's family, None for a session's `load model.` table."""

    ref: str
    model_dir: str
    adapter_dir: str | None = None
    model_type: str | None = None


def resolve_model(ref: str, catalog: Catalog, session_models: SessionModels | None = None) -> ResolvedModel:
    """A model reference -> its directories. In order: a table of the caller's session loaded with
    `load model.` (`session_models`), then the registry (`name`, `name@v2`).

    Raises ModelNotFoundError (listing the registered models) when neither has it."""
    if session_models is not None:
        model_dir = session_models(ref)
        if model_dir is not None:
            return ResolvedModel(ref, model_dir)
    m = catalog.model(ref)
    if m.kind == "adapter":
        return ResolvedModel(m.ref, m.base_model or "", m.path, m.model_type)
    return ResolvedModel(m.ref, m.path, None, m.model_type)


@dataclass(frozen=True)
class DeploySpec:
    """One deployment, checked: a name, a plugin, a model directory and the plugin's infer params.

    `infer_params` is what the plugin's `init_model` receives: byzer-like's own options in snake_case,
    then every key the user gave (strings, Byzer style). `setup` gives the replicas' resources and
    serving limits. `reconnect`: use a running deployment of that name as it is."""

    udf_name: str
    pretrained_model_type: str
    plugin: str
    import_path: str
    model_dir: str
    infer_params: dict[str, str]
    setup: SetupConfig
    reconnect: bool = False
    replace: bool = False
    requested: dict[str, str] = field(default_factory=dict)
    deployed_at: float = field(default_factory=time.time)
    # `where` keys no option names, passed to a built-in plugin, which reads none of them (said to the user)
    ignored: tuple[str, ...] = ()
    # Ray's runtime_env for the replicas, as the plugin asks (vLLM's own Python environment); {} for none
    runtime_env: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, options: Mapping[str, Any], *, setup: SetupConfig, workspace: Workspace, catalog: Catalog,
              session_models: SessionModels | None = None) -> "DeploySpec":
        """Check everything that can fail before a cluster is involved.

        `options`: the `where` keys of `action="infer"` or the client's keywords, in either spelling
        (`pretrainedModelType` / `pretrained_model_type`, `localModelDir` / `model_path`, `udfName`,
        `modelTable`, `reconnect`, the plugin's own infer params). A relative `localModelDir` starts at
        the workspace (SQL's rule); faces that take paths from a shell or from Python code (the CLI, the
        client) resolve them from the current directory and hand them down absolute. Raises ConfigError /
        UnknownOptionError (listing the valid keys), UnknownPluginError, ModelNotFoundError,
        WorkspacePathError, ModelDirError."""
        options = dict(options)
        if not DeployOptions.given(options, "pretrained_model_type"):  # the registry knows a modelTable's type
            options["pretrained_model_type"] = _registry_type(options, catalog, session_models)
        params, model_type, plugin, opts, extra, ignored = cls._options(options, setup)
        setup = remote_resources(setup, plugin.name)
        if opts.model_table not in (None, "command"):  # a loaded model table, or a registered model
            found = resolve_model(opts.model_table, catalog, session_models)
            opts = opts.model_copy(update={"model_dir": found.model_dir, "adapter_dir": found.adapter_dir,
                                           "model_table": found.ref})  # `name` -> the version it is now
        # no directory: a remote model (saas/...) whose options say where it is, or a reconnect
        model_dir = str(workspace.resolve(opts.model_dir, what="model_path")) if opts.model_dir else ""
        if opts.local_path_prefix:  # Byzer's scratch folder: the same path rules as every path, no effect here
            workspace.resolve(opts.local_path_prefix, what="localPathPrefix")
        if opts.adapter_dir:
            opts = opts.model_copy(update={"adapter_dir": str(workspace.resolve(opts.adapter_dir, what="adapter_dir"))})
        infer = {k: as_str(v) for k, v in opts.model_dump(exclude={"model_dir"}).items() if v is not None}
        user = {**_user_keys(params), **extra}
        infer.update({k: as_str(v) for k, v in user.items()})
        # compared by their resolved values below, or not part of what is served
        skip = set().union(*(DeployOptions.spellings(n) for n in ("reconnect", "replace", "model_dir", "model_table",
                                                                        "local_path_prefix")))
        requested = {k: infer[k] for k in user if k not in skip}
        requested.update({k: infer[k] for k in ("model_table", "adapter_dir") if infer.get(k)})
        spec = cls(udf_name=opts.udf_name, pretrained_model_type=model_type, plugin=plugin.name,
                   import_path=plugin.import_path, model_dir=model_dir, infer_params=infer, setup=setup,
                   reconnect=opts.reconnect, replace=opts.replace, requested=requested, ignored=ignored)
        if not spec.reconnect:  # reconnecting to a running deployment needs no model; otherwise check it now
            spec.check_model()
            spec = _replace(spec, runtime_env=plugin.runtime_env(infer, setup.sys_conf()))
        return spec

    @classmethod
    def check_options(cls, options: Mapping[str, Any], *, setup: SetupConfig) -> tuple[Any, DeployOptions]:
        """The checks of `build` that need neither the registry nor the file system: the model type names a
        plugin (under `setup`'s infer_backend), every key is an option or the plugin's (all problems in one
        error), every value is valid. Returns (the plugin, the options). Raises ConfigError /
        UnknownOptionError, UnknownPluginError."""
        _, _, plugin, opts, _, _ = cls._options(options, setup)
        return plugin, opts

    @staticmethod
    def _options(options: Mapping[str, Any], setup: SetupConfig) -> tuple[dict, str, Any, DeployOptions, dict, tuple]:
        """(the keys but action and the plugin's, the model type, the plugin, the options, the plugin's keys,
        the user's own keys a built-in plugin ignores)."""
        params = {k: v for k, v in options.items() if k != "action"}
        model_type = str(DeployOptions.given(params, "pretrained_model_type") or "")
        if not model_type:
            raise ConfigError('deploy needs pretrained_model_type (SQL: pretrainedModelType="<type>", e.g. "auto")')
        task, name = split_model_type(model_type)
        if task:
            raise ConfigError(f"pretrained_model_type {model_type!r} names a training task; "
                              f"deploy the model type itself (e.g. {name!r})")
        # !byzerllm setup "infer_backend=vllm": a local family is served by its vllm/<family> plugin
        model_type = registry.with_backend(name, setup.infer_backend)
        plugin = registry.load(model_type)
        known = DeployOptions.option_names() | plugin.infer_param_names()
        # a key no option names reaches the plugin's infer_params as Byzer passes it, unless it is a typo
        own = own_keys(params, known)
        extra = {k: params.pop(k) for k in list(params) if k in plugin.infer_param_names() or k in own}
        ignored = tuple(own) if plugin.import_path.startswith(BUILT_IN) else ()
        opts = DeployOptions.parse(params, where="deploy", also_valid={k: k for k in plugin.infer_param_names()})
        return params, model_type, plugin, opts, extra, ignored

    def check_model(self) -> None:
        """The plugin accepts the model directory (ModelDirError / ConfigError otherwise)."""
        plugin = registry.load_path(self.plugin, self.import_path)
        if not self.model_dir and plugin.needs_model_dir():
            raise ConfigError("deploy needs model_path (SQL: localModelDir)")
        plugin.check_model_dir(self.model_dir, self.infer_params)

    def differences(self, meta: Mapping[str, Any]) -> list[str]:
        """What a running deployment (its `meta`) serves differently from this spec: the model directory,
        the registry model and version, the adapter, and every infer param the user gave. Empty when
        this spec names no model (a bare reconnect: use whatever runs)."""
        if not self.model_dir and not self.requested:
            return []
        running = dict(meta.get("infer_params") or {})
        out = []
        if self.model_dir and meta.get("model_dir") != self.model_dir:
            out.append(f"model {meta.get('model_dir')!r}, not {self.model_dir!r}")
        for key, want in sorted(self.requested.items()):
            have = running.get(key)
            if have != want:
                out.append(f"{key}={have!r}, not {want!r}")
        return out

    def replica_spec(self) -> dict[str, Any]:
        """What each replica receives (`serving.replica.ModelReplica(spec)`); plain values only (`setup`: the
        typed setup's dump, which the replica reads back once; plugins get it as their sys_conf)."""
        return {
            "udf_name": self.udf_name,
            "pretrained_model_type": self.pretrained_model_type,
            "plugin": self.plugin,
            "import_path": self.import_path,
            "model_dir": self.model_dir,
            "infer_params": dict(self.infer_params),
            "setup": self.setup.model_dump(mode="json"),
            "deployed_at": self.deployed_at,
            "runtime_env": dict(self.runtime_env),
        }


def plugin_for(kind: str, family: str | None) -> str:
    """The model type that serves a registry model of `kind` and recorded `family`: `reward` for a reward
    model (`backends/reward.py`), else its family when a plugin has that name, else `auto`."""
    if kind == "reward":
        return "reward"
    return family if family and family in registry.available() else "auto"


def _registry_type(params: Mapping[str, Any], catalog: Catalog, session_models: SessionModels | None) -> str:
    """The model type of a deploy that names none: what the registry knows of its `modelTable` (`plugin_for`).
    ConfigError when there is no registry model to ask (no modelTable, or a session's `load model.` table)."""
    ref = DeployOptions.given(params, "model_table")
    if not ref or ref == "command" or (session_models is not None and session_models(str(ref)) is not None):
        raise ConfigError('deploy needs pretrained_model_type (SQL: pretrainedModelType="<type>", e.g. "auto"); '
                          'it may be left out only with modelTable="<a registered model>", whose family the registry '
                          'knows')
    m = catalog.model(str(ref))  # ModelNotFoundError lists the registered models
    return plugin_for(m.kind, m.model_type)


REMOTE_CPUS_PER_WORKER = 0.1  # a replica of a saas/* model waits on the network: a tenth of a CPU is plenty


def remote_resources(setup: SetupConfig, plugin_name: str) -> SetupConfig:
    """`setup` for a deployment of plugin `plugin_name`: a remote (`saas/*`) model's replicas reserve
    REMOTE_CPUS_PER_WORKER CPUs each unless `cpus_per_worker` (Byzer's num_cpus) was set, so that Byzer's
    `!byzerllm setup "maxConcurrency=10"` deploys ten of them on a small cluster as it does in Byzer-LLM."""
    if registry.backend_of(plugin_name) != "remote" or "cpus_per_worker" in setup.model_fields_set:
        return setup
    return setup.model_copy(update={"cpus_per_worker": REMOTE_CPUS_PER_WORKER})


def model_types() -> list[tuple[str, str, str]]:
    """Every model type a deploy may name, sorted: (pretrainedModelType, back end, plugin import path); the
    back ends are `plugins.model_types.BACKENDS`' ("plugin" for one a package registered)."""
    return [(name, registry.backend_of(name), path) for name, path in sorted(registry.available().items())]


def _user_keys(params: Mapping[str, Any]) -> dict[str, Any]:
    """The user's own keys, passed to the plugin as given (its `init_model` may read any of them);
    the ones that only name the deployment are left out."""
    naming = DeployOptions.spellings("pretrained_model_type") | DeployOptions.spellings("udf_name")
    return {k: v for k, v in params.items() if k not in naming}


def as_str(value: Any) -> str:
    """A value as the plugin contract passes it: `true`/`false` for booleans, `str()` otherwise."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


__all__ = ["DeploySpec", "plugin_for", "ResolvedModel", "SessionModels", "as_str", "model_types", "resolve_model"]
