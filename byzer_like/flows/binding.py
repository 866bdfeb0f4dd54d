"""Several values as one (`package`), and arguments bound to a stage (`bind`, the placeholders `_0`...`_9`,
`root.<path>`), with LazyLLM's semantics (`lazyllm/common/bind.py`).

    pipeline(proc=gen_data, val=bind(check, root.proc, _0))

               input ──► proc ──► out ─────────────────┐
                          └── its output (root.proc) ─►├─► check(root.proc, out)
                                                       _0

A bind's references are resolved when the flow that holds it is built (`core.resolve`): each becomes the key
under which the running flow records that stage's output; here they are only values that say what they name.
Placeholders pickle by index, so a bound stage can cross a process boundary.
"""
from __future__ import annotations

import functools
import types
from typing import Any, Callable

from ..errors import FlowDefinitionError, FlowInputError


class package(tuple):  # noqa: N801 - LazyLLM's name, a value users write
    """Several values passed on as separate positional arguments: a stage returning `package(a, b)` makes the
    next stage `f(a, b)`; a plain tuple is one value. `package(x, y)` and `package((x, y))` (one tuple or list)
    are the same package."""

    def __new__(cls, *values: Any) -> "package":
        if len(values) == 1 and isinstance(values[0], (tuple, list)):
            values = tuple(values[0])
        return super().__new__(cls, values)

    def __getnewargs__(self) -> tuple:
        return (tuple(self),)

    def __repr__(self) -> str:
        return f"package({', '.join(map(repr, self))})"


class Placeholder:
    """`_0`...`_9`: the stage's own inputs, by position, in a `bind`. Pickles by index (one object per index)."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        object.__setattr__(self, "index", index)

    def __reduce__(self):
        return _placeholder, (self.index,)

    def __repr__(self) -> str:
        return f"_{self.index}"


PLACEHOLDERS = tuple(Placeholder(i) for i in range(10))
_0, _1, _2, _3, _4, _5, _6, _7, _8, _9 = PLACEHOLDERS


def _placeholder(index: int) -> Placeholder:
    return PLACEHOLDERS[index]


class Ref:
    """A value a bind takes from the running flow: a named stage's output or a flow's input."""


class RootRef(Ref):
    """`root.pp1.proc`: the output of the stage at that path of names, from the outermost flow (the flow being
    built, then each flow it becomes a stage of)."""

    __slots__ = ("path",)

    def __init__(self, path: tuple[str, ...] = ()):
        object.__setattr__(self, "path", path)

    def __getattr__(self, name: str) -> "RootRef":
        if name.startswith("__"):
            raise AttributeError(name)
        return RootRef((*self.path, name))

    def __reduce__(self):
        return RootRef, (self.path,)

    def __repr__(self) -> str:
        return ".".join(("root", *self.path))


root = RootRef()


class StageRef(Ref):
    """`p.<stage>` inside `with pipeline() as p:`: that stage's output for a bind. Called, or asked for or
    given an attribute, it stands for the stage itself."""

    def __init__(self, flow: Any, name: str):
        object.__setattr__(self, "flow", flow)
        object.__setattr__(self, "name", name)

    @property
    def stage(self) -> Any:
        return self.flow[self.name]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.stage(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.stage, name)

    def __setattr__(self, name: str, value: Any) -> None:  # `p.fan.x = f` inside `with parallel() as p.fan:`
        setattr(self.stage, name, value)

    def __repr__(self) -> str:
        return f"{type(self.flow).__name__.lower()}.{self.name}"


class InputRef(Ref):
    """`p.input`: the input of flow `p` for a bind inside it."""

    def __init__(self, flow: Any):
        self.flow = flow

    def __repr__(self) -> str:
        return f"{type(self.flow).__name__.lower()}.input"


def _plain(value: Any) -> Any:
    """A bound package arrives as one tuple argument."""
    return tuple(value) if isinstance(value, package) else value


class bind:  # noqa: N801 - LazyLLM's name
    """`fn` with some arguments fixed: `bind(f, a, _0, x=root.proc)`.

    Called with the stage's inputs `(i0, i1, ...)`, it calls `fn` with the bound positional arguments (a
    placeholder `_k` taking input `ik`, a `root.<path>` / `p.<stage>` the output of that stage, `p.input` the
    input of flow `p`, anything else as it is) and the bound keywords (resolved the same way); with no bound
    positional argument the inputs themselves come first, as in LazyLLM. A bound package arrives as one tuple.
    A class is instantiated with no arguments, as a stage is. References are resolved when the flow is built;
    a bind called outside any flow takes values and placeholders only (FlowDefinitionError otherwise)."""

    def __init__(self, fn: Callable, *args: Any, **kwargs: Any):
        if not callable(fn):
            raise FlowDefinitionError(f"bind() takes a callable first, got {fn!r} ({type(fn).__name__})")
        self.fn = fn() if isinstance(fn, type) else fn
        self.args, self.kwargs = args, kwargs
        self.keys: dict[int | str, tuple] = {}  # argument position or keyword -> the key of its value in a run

    def refs(self) -> list[tuple[int | str, Ref]]:
        """The bound references: (position or keyword, reference)."""
        return [(k, v) for k, v in (*enumerate(self.args), *self.kwargs.items()) if isinstance(v, Ref)]

    def arguments(self, inputs: tuple, lookup: Callable[[int | str, Ref], Any]) -> tuple[list, dict]:
        """The positional and keyword arguments `fn` is called with, for the stage's `inputs`; `lookup(position,
        ref)` gives a reference's value in the running flow."""
        def value(k: int | str, v: Any) -> Any:
            if isinstance(v, Placeholder):
                if v.index >= len(inputs):
                    raise FlowInputError(f"bind({label(self.fn)}, ...) takes input {v!r}, but the stage got "
                                         f"{len(inputs)} input(s)")
                return _plain(inputs[v.index])
            return _plain(lookup(k, v)) if isinstance(v, Ref) else v

        args = [value(i, v) for i, v in enumerate(self.args)] if self.args else list(inputs)
        return args, {k: value(k, v) for k, v in self.kwargs.items()}

    def __call__(self, *inputs: Any, **kwargs: Any) -> Any:
        def outside(k: int | str, ref: Ref) -> Any:
            raise FlowDefinitionError(f"bind({label(self.fn)}, ...) names {ref!r}, which has a value only inside a "
                                      "flow; make the bind a stage of the flow that holds it")

        args, bound = self.arguments(inputs, outside)
        return self.fn(*args, **bound, **kwargs)

    def __repr__(self) -> str:
        shown = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"<Bind {label(self.fn)}({', '.join(shown)})>"


def label(fn: Any) -> str:
    """A callable's name for messages and trees: a function's, method's or class's qualified name (its plain name
    when it is local to a function), else its type's name."""
    if isinstance(fn, functools.partial):
        return f"partial({label(fn.func)})"
    if isinstance(fn, (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                       types.MethodDescriptorType, types.WrapperDescriptorType)):
        qualname, name = getattr(fn, "__qualname__", None), getattr(fn, "__name__", None)
        if isinstance(qualname, str) and "<locals>" not in qualname:
            return qualname
        if isinstance(name, str):
            return name
    return type(fn).__name__
