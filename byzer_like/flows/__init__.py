"""Python flows and modules, with LazyLLM's semantics: `pipeline`, `parallel`, `diverter`, `switch`, `warp`,
`package`, `bind` (with `root`, `_0`...`_9`), `register`; `ModuleBase`, `ActionModule`, `module_register`;
stages that run SQL on a session (`sql`) or a function as a Ray task (`remote`). docs/flows.md shows each.
`pipeline_file`: llm-module-style pipeline files (INI or YAML) compiled to one SQL script (`byzer-like pipeline
run FILE`, `ByzerLLM.pipeline(path)`; docs/pipeline_files.md).

Modules: `core` (the flows, walking and resolving them, trees), `binding` (package, placeholders, references,
bind), `stages` (sql, remote), `modules` (ModuleBase, ActionModule), `trainable` (TrainableModule: a job, a
registry version, a deployment), `registry` (register, module_register and their groups, reached as
`flows.<group>`). Nothing here imports Ray or a model library until a stage needs it.
"""
from ..errors import FlowDefinitionError, FlowError, FlowInputError, StageError, UnpicklableStageError
from . import registry
from .binding import _0, _1, _2, _3, _4, _5, _6, _7, _8, _9, bind, package, root
from .core import (Diverter, Flow, Parallel, Pipeline, Switch, Trace, Warp, diverter, make_repr, parallel, pipeline,
                   switch, warp)
from .modules import ActionModule, FunctionModule, ModuleBase
from .registry import module_register, register
from .stages import remote, set_session, sql
from .trainable import TrainableModule

__all__ = ["ActionModule", "Diverter", "Flow", "FlowDefinitionError", "FlowError", "FlowInputError",
           "FunctionModule", "ModuleBase", "Parallel", "Pipeline", "StageError", "Switch", "Trace", "TrainableModule",
           "UnpicklableStageError", "Warp", "_0", "_1", "_2", "_3", "_4", "_5", "_6", "_7", "_8", "_9", "bind",
           "diverter", "make_repr", "module_register", "package", "parallel", "pipeline", "register", "remote", "root",
           "set_session", "sql", "switch", "warp"]

registry.RESERVED.update(__all__, ("binding", "core", "modules", "registry", "stages", "pipeline_file", "trainable"))


def __getattr__(name: str):
    """A registered group (`flows.dataproc`, or one made by `register.new_group` / `module_register.new_group`)."""
    group = registry.GROUPS.get(name)
    if group is None:
        raise AttributeError(f"module 'byzer_like.flows' has no attribute {name!r}")
    return group
