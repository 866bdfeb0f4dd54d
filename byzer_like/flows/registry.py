"""Registered functions and modules, by group, with LazyLLM's semantics (`lazyllm.llmregister`,
`lazyllm.module_register`):

    register.new_group("g")                      module_register.new_group("mods")
    @register("g")                               @module_register("mods")
    def f(x): ...                                def m(x): ...
    flows.g.f          # f itself, a stage      flows.mods.m()   # a module whose forward calls m

Groups live in one table (`GROUPS`), reached as attributes of `byzer_like.flows`; a group's name may not be a
name the package has of its own. A name registered twice in a group is refused, unless it is the same
definition again (a notebook cell run twice).
"""
from __future__ import annotations

from typing import Any, Callable

from ..errors import FlowDefinitionError, did_you_mean
from .modules import FunctionModule

RESERVED: set[str] = set()  # the flows package's own names (filled by its __init__), which no group may take


class Group:
    """A group of registered entries, each an attribute (`flows.dataproc.gen_data`)."""

    def __init__(self, name: str, kind: str):
        self._name, self._kind = name, kind
        self._entries: dict[str, Any] = {}
        self._sources: dict[str, tuple[str, str]] = {}  # name -> (module, qualified name) of its definition

    def _add(self, fn: Callable, entry: Any) -> None:
        name = fn.__name__
        source = (getattr(fn, "__module__", ""), getattr(fn, "__qualname__", name))
        if name in self._entries and self._sources[name] != source:
            raise FlowDefinitionError(f"group {self._name!r} already has {name!r} (from {'.'.join(self._sources[name])}); "
                                      "give the function another name")
        self._entries[name], self._sources[name] = entry, source

    def __getattr__(self, name: str) -> Any:
        entries = self.__dict__.get("_entries", {})
        if name in entries:
            return entries[name]
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"group {self._name!r} has no {name!r}; {did_you_mean(name, entries)}"
                             f"registered: {', '.join(sorted(entries)) or '(none)'}")

    def __dir__(self) -> list[str]:
        return sorted(self._entries)

    def __repr__(self) -> str:
        return f"<Group {self._name} ({self._kind}s): {', '.join(sorted(self._entries)) or '(none)'}>"


GROUPS: dict[str, Group] = {}


class Register:
    """`register(group)` is a decorator that adds a function to `group` (returning the function itself);
    `register.new_group(name)` makes a group. An unknown group is a FlowDefinitionError that lists the groups."""

    def __init__(self, kind: str, entry: Callable[[Callable], Any]):
        self._kind, self._entry = kind, entry

    def new_group(self, name: str) -> Group:
        """Make group `name` (reached as `flows.<name>`); the same call again returns the same group."""
        if not name.isidentifier() or name in RESERVED:
            raise FlowDefinitionError(f"{name!r} cannot name a group: it must be an identifier and not one of "
                                      f"byzer_like.flows' own names ({', '.join(sorted(RESERVED))})")
        group = GROUPS.setdefault(name, Group(name, self._kind))
        if group._kind != self._kind:
            raise FlowDefinitionError(f"group {name!r} already holds {group._kind}s; pick another name for {self._kind}s")
        return group

    def __call__(self, group: str) -> Callable[[Callable], Callable]:
        found = GROUPS.get(group)
        if found is None or found._kind != self._kind:
            known = sorted(n for n, g in GROUPS.items() if g._kind == self._kind)
            raise FlowDefinitionError(f"no {self._kind} group {group!r}; {did_you_mean(group, known)}groups: "
                                      f"{', '.join(known) or '(none)'}; make it with new_group({group!r}) first")

        def add(fn: Callable) -> Callable:
            found._add(fn, self._entry(fn))
            return fn

        return add


def _module_factory(fn: Callable) -> Callable[..., FunctionModule]:
    def make(*, return_trace: bool = False) -> FunctionModule:
        return FunctionModule(fn, return_trace=return_trace)

    make.__name__ = make.__qualname__ = fn.__name__
    make.__doc__ = f"A new module whose forward calls {fn.__name__}."
    return make


register = Register("function", lambda fn: fn)
module_register = Register("module", _module_factory)
for _group in ("dataproc", "validate"):  # LazyLLM's groups for one's own functions
    register.new_group(_group)
