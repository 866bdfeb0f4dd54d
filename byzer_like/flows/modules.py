"""Modules, with LazyLLM's semantics (`lazyllm/module/module.py`): a unit that can be trained, deployed, called
and evaluated, holding other modules as its submodules.

    class MyModule(ModuleBase):
        def _get_train_tasks(self):  return pipeline(lambda: print("trained"))   # run by update()
        def _get_deploy_tasks(self): return pipeline(lambda: print("deployed"))  # run by update() and start()
        def forward(self, input):    return f"answer to {input}"                # m(input)

`update()` is one post-order walk over the module and its submodules (children before parents, each module
once): every train task, then every deploy task, then every evaluation; `start()` walks the same way running
deploy tasks only. A training module (TrainableModule, elsewhere) adds tasks by overriding the two hooks.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

from ..errors import NotSupportedError
from .binding import label, package
from .core import TRACE, Flow, Lifecycle, Pipeline, Trace, as_stage, make_repr, modules_in, stage_repr

_NOT_SUBMODULES = ("trace", "eval_result", "_evalset")  # attributes that hold values, never submodules


class ModuleBase(Lifecycle):
    """The base of modules. A subclass implements any of:

    - `_get_train_tasks()` -> a flow (or callable) run with no input by `update()`;
    - `_get_deploy_tasks()` -> a flow (or callable) run with no input by `update()` and `start()`;
    - `forward(*inputs)` -> the module's output, called by `m(*inputs)`.

    Modules held as attributes (directly, in a flow, a list or a tuple) are its `submodules`. `return_trace=True`
    keeps, in `m.trace`, a `Trace(path, input, output)` for each stage that ran inside each call (appended as each
    stage returns) and one for the call itself. `m.evalset(rows)` sets rows that `update()` / `eval()` call the
    module on, one by one, into `m.eval_result` (the list of outputs)."""

    return_trace = False
    eval_result: list | None = None
    _evalset: list | None = None
    _started = False

    def __init__(self, *, return_trace: bool = False):
        self.return_trace = return_trace
        self.trace: list[Trace] = []

    # -- calling ----------------------------------------------------------------------------------
    def forward(self, *inputs: Any) -> Any:
        """The module's output for `inputs`; a module without one raises NotSupportedError."""
        raise NotSupportedError(f"module {type(self).__name__} defines no forward(), so it cannot be called; "
                                "define forward(self, input) to answer calls")

    def __call__(self, *inputs: Any) -> Any:
        if not self.return_trace:
            return self.forward(*inputs)
        entries: list[Trace] = []
        token = TRACE.set(entries)
        try:
            out = self.forward(*inputs)
        finally:
            TRACE.reset(token)
        entries.append(Trace(self._label(), inputs[0] if len(inputs) == 1 else package(inputs), out))
        self.__dict__.setdefault("trace", []).extend(entries)
        return out

    # -- the lifecycle ----------------------------------------------------------------------------
    def _get_train_tasks(self) -> Flow | Callable | None:
        """A flow run by `update()` to train the module (None: nothing to train)."""
        return None

    def _get_deploy_tasks(self) -> Flow | Callable | None:
        """A flow run by `update()` and `start()` to deploy the module (None: nothing to deploy)."""
        return None

    @property
    def submodules(self) -> list["ModuleBase"]:
        """The modules this one holds as attributes (directly or in flows, lists and tuples), each once, in
        attribute order."""
        found: list[ModuleBase] = []
        for name, value in vars(self).items():
            if name in _NOT_SUBMODULES:
                continue
            for m in _modules_of(value):
                if m is not self and all(m is not f for f in found):
                    found.append(m)
        return found

    def _walk(self) -> list["ModuleBase"]:
        """This module and all its submodules, children before parents, each once."""
        order: list[ModuleBase] = []
        seen: set[int] = set()

        def visit(m: ModuleBase) -> None:
            if id(m) in seen:
                return
            seen.add(id(m))
            for sub in m.submodules:
                visit(sub)
            order.append(m)

        visit(self)
        return order

    def _run_task(self, task: Flow | Callable | None, kind: str) -> None:
        if isinstance(task, Flow):
            task.run_as(f"{self._label()}.{kind}", package())
        elif task is not None:
            task()

    def update(self) -> "ModuleBase":
        """Train every module of the tree (children first), then deploy them all (children first, so a parent
        finds its children deployed), then evaluate each one that has an evalset; returns the module."""
        modules = self._walk()
        for m in modules:
            m._run_task(m._get_train_tasks(), "train")
        for m in modules:
            m._run_task(m._get_deploy_tasks(), "deploy")
            m._started = False  # a later start() deploys again, as LazyLLM's does after an update
        self._evaluate(modules)
        return self

    def start(self) -> "ModuleBase":
        """Deploy every module of the tree (children first) that a previous `start()` has not; returns the
        module."""
        for m in self._walk():
            if not m._started:
                m._run_task(m._get_deploy_tasks(), "deploy")
                m._started = True
        return self

    def evalset(self, rows: list | tuple) -> None:
        """Rows to evaluate the module on: each one is its input (a package: several inputs)."""
        self._evalset = list(rows)

    def eval(self) -> "ModuleBase":
        """Call each module of the tree that has an evalset on its rows, into its `eval_result`; returns the
        module."""
        self._evaluate(self._walk())
        return self

    @staticmethod
    def _evaluate(modules: list["ModuleBase"]) -> None:
        for m in modules:
            if m._evalset is not None:
                m._run_eval()

    def _run_eval(self) -> None:
        """Fill `eval_result` with the module's output for each evalset row (a subclass may measure more)."""
        self.eval_result = [self(*row) if isinstance(row, package) else self(row) for row in self._evalset or []]

    # -- showing ----------------------------------------------------------------------------------
    def _label(self) -> str:
        name = getattr(self, "name", None)
        return f"{type(self).__name__}({name})" if isinstance(name, str) else type(self).__name__

    def __repr__(self) -> str:
        name = getattr(self, "name", None)
        return make_repr("Module", type(self), [repr(m) for m in self.submodules],
                         name=name if isinstance(name, str) else None)


def _modules_of(value: Any) -> Iterator[Lifecycle]:
    if isinstance(value, ModuleBase):
        yield value
    elif isinstance(value, Flow):
        yield from modules_in(value)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _modules_of(v)


class ActionModule(ModuleBase):
    """A module around an action: `ActionModule(f)` (one callable, module or flow) or `ActionModule(a, b, ...)`
    (a pipeline of them). Calling it calls the action; the modules in it are its submodules, so `update()` and
    `start()` reach them."""

    def __init__(self, *action: Any, return_trace: bool = False):
        super().__init__(return_trace=return_trace)
        if len(action) == 1 and isinstance(action[0], (list, tuple)):
            action = tuple(action[0])
        self.action = as_stage(action[0], "[0] of ActionModule") if len(action) == 1 else Pipeline(*action)

    def forward(self, *inputs: Any) -> Any:
        return self.action(*inputs)

    def __repr__(self) -> str:
        return make_repr("Module", "Action", [stage_repr(self.action)])


class FunctionModule(ModuleBase):
    """A function as a module (what `module_register` makes): calling it calls the function."""

    def __init__(self, fn: Callable, *, return_trace: bool = False):
        super().__init__(return_trace=return_trace)
        self.fn = fn
        self.name = label(fn)

    def forward(self, *inputs: Any) -> Any:
        return self.fn(*inputs)
