"""The check of a whole script before its first statement runs: what can be known wrong without running it.

`Session.sql` parses a script, then walks it once here, statement by statement, keeping what the statements
before will have made (`_Plan`: tables, saved folders, the setup, the deployments and what they serve), so a
mistake in the last statement stops the script before the first deploy, training job or model call:

    load        the path inside the allowed roots; the file exists (or an earlier `save` writes it); options
    save        the path inside the allowed roots; options
    set         llm_on_error, llm_cache, llm_dedupe values
    !byzerllm   setup keys and values (the setup later statements see)
    run         the action or ET; every option of its option model (the deploy's plugin's keys too, a training
                task's, merge / convert / quantize / eval / TableRepartition); the paths among them; eval metrics
    select      every literal key of `llm_param(map(...))`; an adapter (`m@qa(...)`, `"adapter", 'qa'`) asked of
                a deployment this script makes that cannot serve adapters

Every problem of one statement's options is said in one error; every error is said at its statement's line
and column (at the word it is about when it names one: the key, the path). Nothing here starts Ray, reads the
registry over the network or touches a model: the checks are the option models, the plugin table, the file
system and the workspace's catalog. What only running can tell (a registry model made by an earlier
statement, a model directory's files, an empty eval table) is checked when the statement runs, and said at
its line and column too (`Session.execute`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import tasks
from ..config import (ConvertOptions, DeployOptions, EvalOptions, MergeOptions, QuantizeOptions, RepartitionOptions,
                      SetupConfig, check_request_key)
from ..errors import ByzerError, ConfigError, DataFileError, ModelNotFoundError, NotSupportedError
from ..runtime.adapters import why_no_adapters
from ..runtime.evaluation import M
from ..runtime.spec import DeploySpec
from ..sql import Command, Load, Run, Save, Select, Set, Statement, to_duckdb
from .commands import setup_pairs
from .io import GLOB_CHARS, SaveOptions, glob_files, load_options
from .position import place
from .statements import ON_ERROR, RUN_ACTIONS, RUN_ETS

FLAGS = ("llm_cache", "llm_dedupe")  # boolean `set` variables (Session.flag)


@dataclass
class _Plan:
    """What the statements checked so far will have made when the next one runs."""

    setup: SetupConfig
    variables: dict[str, str]
    saved: list[Path] = field(default_factory=list)  # folders an earlier `save` (or convert savePath) writes
    # lower-cased udfName of a deployment this script makes -> why it cannot serve adapters (None: it can,
    # or only its engine knows)
    deployments: dict[str, str | None] = field(default_factory=dict)

    def written(self, path: Path) -> bool:
        """Whether an earlier statement writes `path` or a folder holding it."""
        return any(path == p or path.is_relative_to(p) for p in self.saved)


def check_script(session: Any, statements: list[Statement]) -> None:
    """Check every statement of a parsed script in order (see the module's docstring) before any runs.

    Raises the first statement's error (a ByzerError: UnknownOptionError with all of its unknown keys and bad
    values, ConfigError, WorkspacePathError, DataFileError, NotSupportedError, UnknownPluginError ...), said
    at that statement's line and column. Changes nothing in the session."""
    plan = _Plan(session.runtime.setup_config, dict(session.variables))
    for statement in statements:
        check = CHECKS.get(type(statement))
        if check is None:
            continue
        try:
            check(session, statement, plan)
        except ByzerError as e:
            key = getattr(e, "key", None)
            raise e.at(*place(statement, key if isinstance(key, str) else None)) from None


def _at(error: ByzerError, s: Statement, word: str | None) -> ByzerError:
    """`error` said at the first whole `word` of `s` (its start when absent)."""
    return error.at(*place(s, word))


def _path(session: Any, s: Statement, path: str, what: str) -> Path:
    """`path` (SQL's: relative to the workspace) inside the allowed roots, said at the path in `s` otherwise."""
    try:
        return session.workspace.resolve(path, what=what)
    except ByzerError as e:
        raise _at(e, s, path) from None


def _load(session: Any, s: Load, plan: _Plan) -> None:
    load_options(s.format, s.options)
    path = _path(session, s, s.path, "load path")
    if not path.exists() and not plan.written(path):
        if GLOB_CHARS & set(str(path)):  # a Spark-style glob: some file must match it
            try:
                glob_files(path, s.format)
            except ByzerError as e:
                raise _at(e, s, s.path) from None
            return
        raise _at(DataFileError(f"{path} does not exist (and no statement before this one saves it)"), s, s.path)


def _save(session: Any, s: Save, plan: _Plan) -> None:
    SaveOptions.parse(s.options, where=f"save {s.format}")
    plan.saved.append(_path(session, s, s.path, "save path"))


def _set(session: Any, s: Set, plan: _Plan) -> None:
    if not (s.keeps_existing and s.name in plan.variables):
        plan.variables[s.name] = s.value
    value = plan.variables[s.name]
    if s.name == "llm_on_error" and value not in ON_ERROR:
        raise ConfigError(f"llm_on_error must be one of {', '.join(ON_ERROR)}, not {value!r}")
    if s.name in FLAGS and value.strip().lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off", ""):
        raise ConfigError(f'{s.name} must be "true" or "false", not {value!r}')


def _command(session: Any, c: Command, plan: _Plan) -> None:
    if c.name != "byzerllm" or not c.args:
        return
    if c.args[0] == "setup":
        for key, value in setup_pairs(c.args[1:]):
            plan.setup = plan.setup.with_values({key: value})
    elif c.args[:2] == ("model", "remove") and len(c.args) > 2:
        plan.deployments.pop(c.args[2].lower(), None)


def _run(session: Any, s: Run, plan: _Plan) -> None:
    where = dict(s.options)
    if s.target.lower() in RUN_ETS:  # the only ET: TableRepartition
        RepartitionOptions.parse(where, where="TableRepartition")
        return
    action = where.get("action")
    if action is None:
        model_type = DeployOptions.given(where, "pretrained_model_type") or ""
        if s.verb == "train" or tasks.task_of(model_type, plan.setup.mode)[0]:
            return _train(session, s, plan, where)
        action = "infer"
    if action not in RUN_ACTIONS:
        return  # the statement's own handler says so, with the valid actions
    ACTIONS[action](session, s, plan, where)


def _deploy(session: Any, s: Run, plan: _Plan, where: dict[str, str]) -> None:
    if not DeployOptions.given(where, "pretrained_model_type") and DeployOptions.given(where, "model_table"):
        # the type is the registry's (the model may be registered by an earlier statement): checked as it runs
        plan.deployments.pop(str(DeployOptions.given(where, "udf_name") or "").lower(), None)
        return
    plugin, opts = DeploySpec.check_options(where, setup=plan.setup)
    for value, what in ((opts.model_dir, "model_path"), (opts.local_path_prefix, "localPathPrefix"),
                        (opts.adapter_dir, "adapter_dir")):
        if value:
            _path(session, s, value, what)
    if opts.reconnect:  # a running deployment, as it is: what it serves is known when it is bound
        plan.deployments.pop(opts.udf_name.lower(), None)
        return
    merged = opts.adapter_dir or _registered_adapter(session, opts.model_table)
    model_type = str(DeployOptions.given(where, "pretrained_model_type"))
    plan.deployments[opts.udf_name.lower()] = why_no_adapters(plugin, merged, model_type)


def _registered_adapter(session: Any, ref: str | None) -> str | None:
    """The folder of registered LoRA adapter `ref` (a modelTable that deploys merged into its base), else None."""
    if ref in (None, "command") or session.has_table(ref):
        return None
    try:
        m = session.runtime.catalog.model(ref)
    except (ModelNotFoundError, ConfigError):  # registered by an earlier statement, or an error when it runs
        return None
    return m.path if m.kind == "adapter" else None


def _train(session: Any, s: Run, plan: _Plan, where: dict[str, str]) -> None:
    task = tasks.require_task(DeployOptions.given(where, "pretrained_model_type") or "", plan.setup.mode)
    opts = task.parse_options(where)
    for value, what in ((opts.model_dir, "model_path"), (opts.local_path_prefix, "localPathPrefix")):
        if value:
            _path(session, s, value, what)


def _options_of(model: type, name: str) -> Callable[[Any, Run, _Plan, dict[str, str]], None]:
    """The check of `action=<name>`: its option model, and the paths among its options."""
    def check(session: Any, s: Run, plan: _Plan, where: dict[str, str]) -> None:
        opts = model.parse(where, where=f'action="{name}"')
        if getattr(opts, "local_path_prefix", None):
            _path(session, s, opts.local_path_prefix, "localPathPrefix")
        if isinstance(opts, ConvertOptions):
            opts.source()
            if opts.save_path:
                plan.saved.append(_path(session, s, opts.save_path, "savePath"))
        if isinstance(opts, EvalOptions):
            M.parse_metrics(opts.metrics)  # UnknownMetricError, with the valid metrics
    return check


def _select(session: Any, s: Select, plan: _Plan) -> None:
    for request in to_duckdb(s.sql).requests:
        for key in request.keys:
            try:
                check_request_key(key)
            except ByzerError as e:
                raise _at(e, s, key) from None
        why = plan.deployments.get(request.model or "")
        if request.adapter and why:
            raise _at(NotSupportedError(f"deployment {request.model!r} cannot serve adapter {request.adapter!r}: "
                                        f"{why}"), s, request.adapter)


# the check of each statement type, and of each `run ... as LLM` action
CHECKS: dict[type, Callable[[Any, Any, _Plan], None]] = {
    Load: _load, Save: _save, Set: _set, Command: _command, Run: _run, Select: _select}
ACTIONS: dict[str, Callable[[Any, Run, _Plan, dict[str, str]], None]] = {
    "infer": _deploy, "merge": _options_of(MergeOptions, "merge"), "convert": _options_of(ConvertOptions, "convert"),
    "quantize": _options_of(QuantizeOptions, "quantize"), "eval": _options_of(EvalOptions, "eval")}

__all__ = ["CHECKS", "check_script"]
