"""Flows: pipeline, parallel, diverter, switch, warp, with LazyLLM's semantics (`lazyllm/flow/flow.py`).

A flow holds stages: plain callables, classes (instantiated with no arguments), modules (`modules.ModuleBase`),
other flows, binds (`binding.bind`), SQL snippets and Ray tasks (`stages.sql`, `stages.remote`). Stages may be
named (`pipeline(proc=f, val=g)`, or `p.proc = f` inside `with pipeline() as p:`), and a flow is a callable:

- a stage's output is the next stage's input; a `package` is unpacked into the next stage's positional
  arguments, anything else (a plain tuple too) is one value;
- an exception a stage raises comes out as `StageError` naming the stage's path (`root.proc.branch1`: names,
  or `[i]` for an unnamed stage), with the original as `__cause__`;
- branches of parallel, diverter and warp run at once on threads (at most MAX_THREADS per call);
- `bind` references (`root.<path>`, `p.<stage>`, `p.input`) are resolved when a flow is built (its constructor
  or `with` block ends, and again when it becomes a stage of a larger flow): a reference to a stage that runs
  later, beside or around the bind is a FlowDefinitionError there; one that names no stage at all is one when
  the outermost flow is first called (a flow built later may still hold it);
- a run keeps each stage's output in a `Scope` (one per flow call), looked up from the innermost outward, so
  the branches of a warp each see their own.
"""
from __future__ import annotations

import concurrent.futures
import contextvars
import functools
import operator
import sys
import threading
import types
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ..errors import FlowDefinitionError, FlowError, FlowInputError, StageError, closest, did_you_mean
from .binding import InputRef, Ref, RootRef, StageRef, bind, label, package

MAX_THREADS = 8  # threads one call of a parallel / diverter / warp runs its branches on
DEFAULT = "default"  # the switch condition taken when no other matches


@dataclass(frozen=True)
class Trace:
    """One stage's input and output, kept for a module made with `return_trace=True` (`m.trace`)."""

    path: str
    input: Any
    output: Any


TRACE: contextvars.ContextVar[list[Trace] | None] = contextvars.ContextVar("byzer_like_flows_trace", default=None)
_building = threading.local()  # the flows whose `with` block is open in this thread, innermost last


class Lifecycle:
    """What a flow knows of a module: it can be started. `modules.ModuleBase` derives from it, so that flows
    find the modules among their stages (`modules_in`, `Flow.start`) without importing them."""

    def start(self) -> "Lifecycle":
        return self


# -- trees ------------------------------------------------------------------------------------------
def make_repr(category: str, kind: str | type, subs: list[str] | tuple[str, ...] = (), **attrs: Any) -> str:
    """`<Category type=Kind k=v ...>`, then one line per sub-tree, children indented (LazyLLM's `make_repr`):

        <Flow type=Pipeline>
        |- proc: <Function gen_data>
        └- val: <Flow type=Parallel>
            |- <Function a>
            └- <Function b>
    Attributes that are None are left out."""
    kind = kind.__name__ if isinstance(kind, type) else kind
    head = " ".join([category, f"type={kind}", *(f"{k}={v}" for k, v in attrs.items() if v is not None)])
    lines = [f"<{head}>"]
    for i, sub in enumerate(subs):
        last = i == len(subs) - 1
        first, *rest = str(sub).splitlines() or [""]
        lines.append(("└- " if last else "|- ") + first)
        lines += [("    " if last else "|   ") + line for line in rest]
    return "\n".join(lines)


def stage_repr(stage: Any) -> str:
    """A stage's line (or tree): a function as `<Function name>`, a callable object without a repr of its own as
    `<Callable Type>`, anything else (flows, modules, binds) by its own repr."""
    if isinstance(stage, (types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.MethodDescriptorType,
                          functools.partial)):
        return f"<Function {label(stage)}>"
    if type(stage).__repr__ is object.__repr__:
        return f"<Callable {type(stage).__name__}>"
    return repr(stage)


# -- a run ------------------------------------------------------------------------------------------
class Scope:
    """The outputs recorded during one call of a flow (keyed `(id(flow), stage index)`, and `(id(flow),
    "input")`), inside the scope of the call that made it. A stage's output is recorded in every enclosing
    scope, so a later stage of an outer pipeline finds it; a lookup starts at the innermost."""

    __slots__ = ("parent", "values")

    def __init__(self, parent: "Scope | None" = None):
        self.parent, self.values = parent, {}

    def record(self, key: tuple, value: Any) -> None:
        scope: Scope | None = self
        while scope is not None:
            scope.values[key] = value
            scope = scope.parent

    def lookup(self, key: tuple) -> Any:
        scope: Scope | None = self
        while scope is not None:
            if key in scope.values:
                return scope.values[key]
            scope = scope.parent
        raise KeyError(key)


def child_path(path: str, name: str | None, index: int) -> str:
    return f"{path}.{name}" if name else f"{path}[{index}]"


def call(stage: Any, value: Any) -> Any:
    """A plain stage called with `value`: a package as separate arguments, anything else as one."""
    return stage(*value) if isinstance(value, package) else stage(value)


def invoke(stage: Any, value: Any, scope: Scope, path: str) -> Any:
    """Run one stage on `value` within `scope`; a non-flow exception becomes StageError naming `path`; the
    stage's input and output go to the active trace (TRACE) when there is one."""
    try:
        if isinstance(stage, Flow):
            out = stage._call(value, scope, path)
        elif isinstance(stage, bind):
            out = _call_bind(stage, value, scope, path)
        else:
            out = call(stage, value)
    except FlowError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of a stage is the flow's StageError, the original its cause
        raise StageError(path, e) from e
    trace = TRACE.get()
    if trace is not None:
        trace.append(Trace(path, value, out))
    return out


def _call_bind(b: bind, value: Any, scope: Scope, path: str) -> Any:
    def lookup(k: int | str, ref: Ref) -> Any:
        if k not in b.keys:
            raise FlowDefinitionError(f"the bind at {path} names {ref!r}, which no stage of this flow answers")
        try:
            return scope.lookup(b.keys[k])
        except KeyError:
            raise FlowInputError(f"the bind at {path} names {ref!r}, which did not run in this call (a switch "
                                 "took another branch)", path=path) from None

    args, kwargs = b.arguments(tuple(value) if isinstance(value, package) else (value,), lookup)
    if isinstance(b.fn, Flow):
        if kwargs:
            raise FlowDefinitionError(f"the bind at {path} gives keywords to a flow, which takes positional inputs only")
        return b.fn._call(args[0] if len(args) == 1 else package(args), scope, path)
    return b.fn(*args, **kwargs)


def run_branches(jobs: list[tuple[Any, Any, str]], scope: Scope) -> list[Any]:
    """Run `(stage, input, path)` jobs at once on threads (at most MAX_THREADS), each in a copy of the caller's
    context (so a trace follows it); outputs in the jobs' order. When branches fail, every branch still ends
    first and the first failing one's error (in branch order) is raised."""
    if len(jobs) <= 1:
        return [invoke(stage, value, scope, path) for stage, value, path in jobs]
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(MAX_THREADS, len(jobs)),
                                               thread_name_prefix="flow-branch") as pool:
        futures = [pool.submit(contextvars.copy_context().run, invoke, stage, value, scope, path)
                   for stage, value, path in jobs]
        concurrent.futures.wait(futures)
    return [f.result() for f in futures]


# -- flows ------------------------------------------------------------------------------------------
def as_stage(value: Any, where: str) -> Any:
    """A stage as a flow holds it: a class instantiated with no arguments, a `p.<stage>` reference as that
    stage; FlowDefinitionError for what cannot be called."""
    if isinstance(value, StageRef):
        return value.stage
    if isinstance(value, type):
        try:
            value = value()
        except Exception as e:  # noqa: BLE001 - said with the stage it was for
            raise FlowDefinitionError(f"stage {where}: class {value.__name__} is a stage, so it is instantiated with "
                                      f"no arguments, and that raised {type(e).__name__}: {e}") from e
    if not callable(value) or isinstance(value, Ref):
        raise FlowDefinitionError(f"stage {where} is {value!r} ({type(value).__name__}), which cannot be called; a "
                                  "stage is a function, a class, a module, a flow, a bind, flows.sql(...) or flows.remote(...)")
    return value


class Flow:
    """The base of the flows: stages, their names (None for an unnamed one), an optional `post_action`.

    `Flow(*stages, post_action=None, **named_stages)`; inside `with Flow() as p:`, `p.name = stage` adds a named
    stage (a duplicate name is a FlowDefinitionError), `p.name` is then a reference to that stage's output for a
    `bind`, and a flow built by a `with` block inside the block becomes the next stage. `flow[i]`, `flow["name"]`
    and `flow.name` give a stage. Calling a flow with one argument gives it that input, with several a package
    of them, with none an empty package (the first stage is called with no arguments)."""

    def __init__(self, *stages: Any, post_action: Callable | None = None, **named: Any):
        self._stages: list[Any] = []
        self._names: list[str | None] = []
        self._capturing = False
        for stage in stages:
            self._add(None, stage)
        for name, stage in named.items():
            self._add(name, stage)
        self.post_action = post_action
        self._built()

    # -- building ---------------------------------------------------------------------------------
    def _add(self, name: str | None, stage: Any) -> None:
        if name is not None and name in self._names:
            raise FlowDefinitionError(f"{type(self).__name__} already has a stage named {name!r}; stage names: "
                                      f"{', '.join(n for n in self._names if n)}")
        where = name or f"[{len(self._stages)}]"
        self._stages.append(as_stage(stage, f"{where} of {type(self).__name__}"))
        self._names.append(name)

    def _built(self) -> None:
        """The flow is whole (its constructor or `with` block ended): resolve the binds' references in it."""
        resolve(self)

    def __enter__(self) -> "Flow":
        self._capturing = True
        stack = _building.__dict__.setdefault("stack", [])
        stack.append(self)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        stack = _building.stack
        stack.pop()
        self._capturing = False
        if exc_type is not None:
            return False
        if stack and stack[-1]._capturing and not any(s is self for s in stack[-1]._stages):
            names = [k for k, v in sys._getframe(1).f_locals.items() if v is self]  # `with parallel() as par:`
            parent = stack[-1]
            parent._add(names[0] if names and names[0] not in parent._names else None, self)
        self._built()
        return False

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_capturing") and not name.startswith("_") and name != "post_action":
            self._add(name, value)
        elif name in self.__dict__.get("_names", ()):
            raise FlowDefinitionError(f"stage {name!r} of {type(self).__name__} can be set only inside its `with` block")
        else:
            if name == "post_action" and value is not None:
                value = as_stage(value, "post_action")
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        names = self.__dict__.get("_names", ())
        if name in names:
            if self.__dict__.get("_capturing"):
                return StageRef(self, name)
            return self._stages[names.index(name)]
        if name.startswith("__"):
            raise AttributeError(name)
        shown = [n for n in names if n]
        raise AttributeError(f"{type(self).__name__} has no stage or attribute {name!r}; {did_you_mean(name, shown)}"
                             f"stage names: {', '.join(shown) or '(none)'}")

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            if key not in self._names:
                raise KeyError(f"{type(self).__name__} has no stage {key!r}; {did_you_mean(key, [n for n in self._names if n])}"
                               f"stage names: {', '.join(n for n in self._names if n) or '(none)'}")
            return self._stages[self._names.index(key)]
        return self._stages[key]

    @property
    def input(self) -> InputRef:
        """This flow's input, for a `bind` inside it (`bind(f, p.input, _0)`)."""
        return InputRef(self)

    def entries(self) -> list[tuple[str | None, Any]]:
        """(name, stage) for each stage, in order."""
        return list(zip(self._names, self._stages))

    # -- running ----------------------------------------------------------------------------------
    def __call__(self, *args: Any) -> Any:
        return self.run_as("root", args[0] if len(args) == 1 else package(args))

    def run_as(self, name: str, value: Any) -> Any:
        """Run this flow as an outermost one whose path is `name` (errors name `name.stage`); references that
        no stage answers are a FlowDefinitionError first."""
        unresolved(self)
        return self._call(value, Scope(), name)

    def _call(self, value: Any, scope: Scope, path: str) -> Any:
        inner = Scope(scope)
        inner.values[(id(self), "input")] = value
        out = self._run(value, inner, path)
        if self.post_action is not None:
            invoke(self.post_action, out, inner, f"{path}.post_action")
        return out

    def _run(self, value: Any, scope: Scope, path: str) -> Any:
        raise NotImplementedError

    def start(self) -> "Flow":
        """Start (deploy) every module among the stages, however deep; returns the flow."""
        for m in modules_in(self):
            m.start()
        return self

    def _subs(self) -> list[str]:
        subs = [f"{n}: {stage_repr(s)}" if n else stage_repr(s) for n, s in self.entries()]
        return subs + ([f"post_action: {stage_repr(self.post_action)}"] if self.post_action is not None else [])

    def __repr__(self) -> str:
        return make_repr("Flow", type(self).__name__, self._subs())


class Pipeline(Flow):
    """Stages in order, each one's output the next one's input; the last one's output is the pipeline's. A
    `post_action` is called with that output, and what it returns is dropped.

        input ──► stage1 ──► stage2 ──► ... ──► stageN ──► output
                                                     └──► post_action"""

    def _run(self, value: Any, scope: Scope, path: str) -> Any:
        for i, (name, stage) in enumerate(self.entries()):
            value = invoke(stage, value, scope, child_path(path, name, i))
            scope.record((id(self), i), value)
        return value


class Parallel(Flow):
    """The same input to every branch, at once (threads); the outputs gathered, in branch order, into a
    `package` (so the next stage gets them as separate arguments), or with `.sum` (added up: text joined),
    `.asdict` (by branch name: every branch must be named), `.astuple` (one tuple value), `.aslist` (one list)
    or `.join(sep)` (their text joined by `sep`).

              ┌─► branch1 ─► out1 ─┐
        input ├─► branch2 ─► out2 ─┼─► package(out1, out2, out3)
              └─► branch3 ─► out3 ─┘"""

    _gather: tuple[str, Any] | None = None

    def _with(self, how: str, arg: Any = None) -> "Parallel":
        object.__setattr__(self, "_gather", (how, arg))
        self._check_gather()
        return self

    sum = property(lambda self: self._with("sum"), doc="Gather the outputs by adding them up (text is joined).")
    asdict = property(lambda self: self._with("dict"), doc="Gather the outputs into a dict by branch name.")
    astuple = property(lambda self: self._with("tuple"), doc="Gather the outputs into one tuple value.")
    aslist = property(lambda self: self._with("list"), doc="Gather the outputs into one list value.")

    def join(self, sep: str = "") -> "Parallel":
        """Gather the outputs as their text joined by `sep`."""
        return self._with("join", sep)

    def _check_gather(self) -> None:
        if self._gather and self._gather[0] == "dict" and None in self._names:
            raise FlowDefinitionError(f"{type(self).__name__}.asdict needs every branch named "
                                      f"({type(self).__name__.lower()}(a=f, b=g)); branch names: {self._names}")

    def _built(self) -> None:
        self._check_gather()
        super()._built()

    def _jobs(self, value: Any, path: str) -> list[tuple[Any, Any, str]]:
        return [(stage, value, child_path(path, name, i)) for i, (name, stage) in enumerate(self.entries())]

    def _run(self, value: Any, scope: Scope, path: str) -> Any:
        outs = run_branches(self._jobs(value, path), scope)
        for i, out in enumerate(outs):
            scope.record((id(self), i), out)
        return self._gathered(outs)

    def _gathered(self, outs: list[Any]) -> Any:
        how, arg = self._gather or ("package", None)
        if how == "sum":
            if not outs:
                return package()
            return "".join(map(str, outs)) if all(isinstance(o, str) for o in outs) else functools.reduce(operator.add, outs)
        if how == "dict":
            return dict(zip(self._names, outs))
        if how == "join":
            return arg.join(map(str, outs))
        return {"tuple": tuple, "list": list, "package": package}[how](outs)

    def __repr__(self) -> str:
        how = self._gather and self._gather[0]
        return make_repr("Flow", type(self).__name__, self._subs(), gather=how)


def _split(flow: Flow, value: Any, path: str) -> tuple:
    if not isinstance(value, (tuple, list)):
        raise FlowInputError(f"{type(flow).__name__.lower()} at {path} takes several inputs (a package, a tuple or "
                             f"a list), got {type(value).__name__} {value!r}", path=path)
    return tuple(value)


class Diverter(Parallel):
    """One input per branch, at once (threads): a package, tuple or list of as many values as branches; the
    outputs gathered as a parallel's are.

        (in1, in2, in3) ─► in1 ─► branch1 ─► out1 ─┐
                           in2 ─► branch2 ─► out2 ─┼─► package(out1, out2, out3)
                           in3 ─► branch3 ─► out3 ─┘"""

    def _jobs(self, value: Any, path: str) -> list[tuple[Any, Any, str]]:
        values = _split(self, value, path)
        if len(values) != len(self._stages):
            raise FlowInputError(f"diverter at {path} has {len(self._stages)} branches but got {len(values)} inputs; "
                                 "give it one input per branch", path=path)
        return [(stage, v, child_path(path, name, i)) for i, ((name, stage), v) in enumerate(zip(self.entries(), values))]


class Warp(Parallel):
    """One branch over many inputs, at once (threads): each value of a package, tuple or list goes through the
    branch (several stages make one pipeline branch); the outputs gathered as a parallel's are (in input order).

        (in1, in2, in3) ─► branch(in1), branch(in2), branch(in3) ─► package(out1, out2, out3)"""

    def __init__(self, *stages: Any, post_action: Callable | None = None, **named: Any):
        if len(stages) + len(named) > 1:
            stages, named = (Pipeline(*stages, **named),), {}
        super().__init__(*stages, post_action=post_action, **named)

    def _check_gather(self) -> None:
        if self._gather and self._gather[0] == "dict":
            raise FlowDefinitionError("warp runs one branch over many inputs, which have no names: gather them with "
                                      ".sum, .astuple, .aslist or .join(sep) instead of .asdict")

    def _jobs(self, value: Any, path: str) -> list[tuple[Any, Any, str]]:
        if len(self._stages) != 1:
            raise FlowDefinitionError(f"warp at {path} has {len(self._stages)} branches; warp(f) runs one branch f over "
                                      "each input (warp(f, g) makes f and g one pipeline branch)")
        return [(self._stages[0], v, f"{path}[{i}]") for i, v in enumerate(_split(self, value, path))]


class Switch(Flow):
    """One branch, chosen by the input: `switch(cond1, branch1, cond2, branch2, ..., 'default', branchN)` or
    `switch({cond1: branch1, ...})`. A condition is a predicate (called with the input, or with `conversion(input)`
    when `conversion` is given) or a value compared with it (`==`); the first that holds picks its branch,
    which gets the input. `'default'` is taken when none holds; with no default, a FlowInputError names the
    value and the cases.

        input ─► cond1? ─► branch1
                 cond2? ─► branch2
                 default ─► branchN"""

    def __init__(self, *cases: Any, conversion: Callable | None = None, post_action: Callable | None = None):
        pairs = list(cases[0].items()) if len(cases) == 1 and isinstance(cases[0], dict) else None
        if pairs is None:
            if len(cases) % 2:
                raise FlowDefinitionError(f"switch takes condition, branch pairs (or one dict of them); got {len(cases)} "
                                          "arguments, an odd number")
            pairs = list(zip(cases[0::2], cases[1::2]))
        conditions = [c for c, _ in pairs]
        if sum(1 for c in conditions if _is_default(c)) > 1:
            raise FlowDefinitionError("switch has more than one 'default' branch")
        object.__setattr__(self, "conditions", conditions)
        object.__setattr__(self, "conversion", conversion)
        super().__init__(*[b for _, b in pairs], post_action=post_action)

    def __enter__(self) -> "Flow":
        raise FlowDefinitionError("a switch is built from its cases: switch(cond1, branch1, ..., 'default', branchN)")

    def _run(self, value: Any, scope: Scope, path: str) -> Any:
        key = value
        if self.conversion is not None:
            key = _checked(self.conversion, value, f"{path}.conversion")
        chosen = next((i for i, c in enumerate(self.conditions) if not _is_default(c) and (
            _checked(c, key, f"{path}.case[{i}]") if callable(c) else key == c)), None)
        if chosen is None:
            chosen = next((i for i, c in enumerate(self.conditions) if _is_default(c)), None)
        if chosen is None:
            cases = ", ".join(_case(c) for c in self.conditions) or "(none)"
            raise FlowInputError(f"switch at {path}: no case matches {key!r}; cases: {cases}; add a 'default' branch "
                                 "for the rest", path=path)
        out = invoke(self._stages[chosen], value, scope, f"{path}[{chosen}]")
        scope.record((id(self), chosen), out)
        return out

    def _subs(self) -> list[str]:
        subs = [f"{_case(c)}: {stage_repr(s)}" for c, s in zip(self.conditions, self._stages)]
        return subs + ([f"post_action: {stage_repr(self.post_action)}"] if self.post_action is not None else [])


def _is_default(condition: Any) -> bool:
    return isinstance(condition, str) and condition == DEFAULT


def _case(condition: Any) -> str:
    if _is_default(condition):
        return DEFAULT
    return label(condition) if callable(condition) else repr(condition)


def _checked(fn: Callable, value: Any, path: str) -> Any:
    """A switch's predicate or conversion, its exception a StageError naming `path`."""
    try:
        return call(fn, value)
    except Exception as e:  # noqa: BLE001
        raise StageError(path, e) from e


pipeline, parallel, diverter, warp, switch = Pipeline, Parallel, Diverter, Warp, Switch


# -- walking a flow ---------------------------------------------------------------------------------
def _children(stage: Any) -> Iterator[tuple[Any, int, Any]]:
    """(holder flow, position, stage) for the stages directly inside `stage` (a flow's stages then its
    post_action, at position len(stages); a bind's flow, at the bind's own place)."""
    if isinstance(stage, Flow):
        for i, s in enumerate(stage._stages):
            yield stage, i, s
        if stage.post_action is not None:
            yield stage, len(stage._stages), stage.post_action


def _binds(flow: Flow, chain: tuple = ()) -> Iterator[tuple[bind, tuple]]:
    """Every bind in `flow`, however deep, with its chain of (holder flow, position) from `flow` down."""
    for holder, i, stage in _children(flow):
        here = (*chain, (holder, i))
        while isinstance(stage, bind):
            yield stage, here
            stage = stage.fn
        if isinstance(stage, Flow):
            yield from _binds(stage, here)


def modules_in(stage: Any) -> Iterator[Lifecycle]:
    """The modules among a flow's stages (or a bind's function), however deep, each once, in order; modules
    inside modules are theirs (`ModuleBase.submodules`)."""
    seen: set[int] = set()

    def walk(s: Any) -> Iterator[Lifecycle]:
        while isinstance(s, bind):
            s = s.fn
        if isinstance(s, Lifecycle):
            if id(s) not in seen:
                seen.add(id(s))
                yield s
        else:
            for _, _, child in _children(s):
                yield from walk(child)

    return walk(stage)


def _named_chain(flow: Flow, path: tuple[str, ...]) -> tuple | None:
    """The chain of (holder flow, position) of the stage at `path` (names) from `flow`, or None."""
    chain, here = (), flow
    for name in path:
        if not isinstance(here, Flow) or name not in here._names:
            return None
        i = here._names.index(name)
        chain, here = (*chain, (here, i)), here._stages[i]
    return chain


def _paths(flow: Flow, prefix: str = "root") -> list[str]:
    out = []
    for name, stage in flow.entries():
        if name:
            out.append(f"{prefix}.{name}")
            if isinstance(stage, Flow):
                out += _paths(stage, f"{prefix}.{name}")
    return out


def _check_order(ref: Ref, target: tuple, where: tuple) -> None:
    """A reference to the stage at chain `target` is sound for a bind at chain `where` when, where the two
    chains part, the target is an earlier stage of a pipeline (or the holder's post_action is the bind), and no
    warp between runs it several times."""
    k = next((i for i, (a, b) in enumerate(zip(target, where)) if a[0] is not b[0] or a[1] != b[1]), None)
    if k is None:
        raise FlowDefinitionError(f"a bind binds {ref!r}, the output of a stage that holds the bind itself; bind "
                                  "the output of an earlier stage, or the flow's input (p.input)")
    holder, t, b = target[k][0], target[k][1], where[k][1]
    after_all = b == len(holder._stages)  # the holder's post_action
    if not (isinstance(holder, Pipeline) or after_all) or t >= b:
        how = "runs beside it" if not isinstance(holder, Pipeline) and not after_all else "runs after it"
        raise FlowDefinitionError(f"a bind binds {ref!r}, a stage that {how} (in the {type(holder).__name__.lower()}"
                                  " that holds both); bind the output of a stage that runs before the bind")
    if any(isinstance(h, Warp) for h, _ in target[k + 1:]):
        raise FlowDefinitionError(f"a bind binds {ref!r}, a stage inside a warp, which runs once per input; bind the "
                                  "warp's output instead")


def resolve(flow: Flow) -> None:
    """Resolve the references of every bind in `flow` with `flow` as the root: `root.<path>` from `flow`'s
    stage names, `p.<stage>` and `p.input` when the bind is inside `p`. A reference to a stage that runs later,
    beside or around the bind is a FlowDefinitionError; one this flow cannot answer is left for a larger flow."""
    for b, where in _binds(flow):
        for k, ref in b.refs():
            if isinstance(ref, RootRef):
                target = _named_chain(flow, ref.path)
            elif isinstance(ref, StageRef):
                at = next((i for i, (h, _) in enumerate(where) if h is ref.flow), None)
                target = None if at is None else (*where[:at], (ref.flow, ref.flow._names.index(ref.name)))
            else:  # InputRef
                if any(h is ref.flow for h, _ in where):
                    b.keys[k] = (id(ref.flow), "input")
                continue
            if target is not None:
                _check_order(ref, target, where)
                b.keys[k] = (id(target[-1][0]), target[-1][1])


def unresolved(flow: Flow) -> None:
    """FlowDefinitionError for the first bind reference in `flow` that no stage answers."""
    for b, where in _binds(flow):
        for k, ref in b.refs():
            if k in b.keys:
                continue
            at = "".join(f".{h._names[i]}" if i < len(h._names) and h._names[i] else
                         ".post_action" if i == len(h._stages) else f"[{i}]" for h, i in where)
            if isinstance(ref, RootRef):
                known = _paths(flow)
                hint = closest(repr(ref), known)
                raise FlowDefinitionError(f"the bind at root{at} binds {ref!r}, which names no stage of this flow; "
                                          f"{f'did you mean {hint}? ' if hint else ''}stage paths: {', '.join(known) or '(none)'}")
            raise FlowDefinitionError(f"the bind at root{at} binds {ref!r}, which is not a stage or input of a flow "
                                      "that holds the bind; make the bind a stage inside that flow")
