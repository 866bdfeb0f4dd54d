"""Typed errors. Every error a user can cause says what went wrong and what to do about it.

The hierarchy is flat on purpose: callers catch `ByzerError` for "a user-facing problem" and the
CLI prints it as one line; anything else is a bug and keeps its traceback. Every error class a user
can catch lives here.

    ByzerError
      ConfigError (ValueError)            UnknownOptionError
      WorkspacePathError (PermissionError)
      ClusterError (RuntimeError)
      PluginError                         UnknownPluginError (KeyError), UnsupportedModelTypeError
      ModelDirError (FileNotFoundError)
      DeployError (RuntimeError)          DuplicateDeploymentError, ModelNotDeployedError (KeyError)
      InferenceError (RuntimeError)       InvalidRequestError (ValueError) > PromptTooLongError,
                                          BackPressureError, RequestTimeoutError (TimeoutError)
      NotSupportedError (NotImplementedError)   NotAChatModelError (chat on an embedding model)
      SqlError (line, column, snippet)    SqlSyntaxError (ValueError), UnknownTableError (KeyError),
                                          UnknownFunctionError, ExecutionError
      RowError (ValueError)               a row a model could not answer in a select
      TableExistsError (FileExistsError), DataFileError (ValueError)   load / save
      JobError (RuntimeError), JobNotFoundError (KeyError)             training jobs
      ModelNotFoundError (KeyError), ModelExistsError (FileExistsError) the model registry
      AdapterNotFoundError (ConfigError, KeyError), AdapterBaseError, AdapterRankError (ConfigError)   LoRA adapters served
                                          on a base deployment (`m@qa_model`, `model="m:qa_model"`)
      ConvertError (RuntimeError)         ModelFileError (ValueError) > UnsupportedArchitectureError,
                                          CheckpointError (FileNotFoundError), QuantizeError
                                          importing, converting and quantizing models
      UnknownMetricError, EvalSetError, PromotionError (ConfigError); JudgeNotDeployedError
      (ModelNotDeployedError); EvalNotFoundError (KeyError)   evaluation and gated promotion
      FlowError                           FlowDefinitionError (ValueError) > UnpicklableStageError (TypeError),
                                          FlowInputError (ValueError), StageError (RuntimeError)
                                          Python flows and modules (`byzer_like.flows`)
"""
from __future__ import annotations

import difflib
import unicodedata
from typing import Iterable, Mapping, Self


def _choices(values: Iterable[str]) -> str:
    values = sorted(set(values))
    return ", ".join(values) if values else "(none)"


def _folded(name: str) -> str:
    """A name without case, `_` and `-`: `learningRate`, `learning_rate` and `learning-rate` fold alike."""
    return name.replace("_", "").replace("-", "").lower()


def one_edit_apart(a: str, b: str) -> bool:
    """Whether `a` becomes `b` by one insertion, deletion, substitution or swap of two neighbours, compared
    without case, `_` and `-` (`num_wrkers` / `num_workers`, `numGpu` / `num_gpus`); equal names are not."""
    a, b = _folded(a), _folded(b)
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
    if len(a) < len(b):
        return a[i:] == b[i + 1:]
    return a[i + 1:] == b[i + 1:] or (a[i + 1:i + 2] == b[i:i + 1] and a[i:i + 1] == b[i + 1:i + 2] and a[i + 2:] == b[i + 2:])


def own_keys(keys: Iterable[str], known: Iterable[str]) -> list[str]:
    """The `keys` that name none of `known` and are no typo of one (`one_edit_apart`, or the same name in other
    case: `udfname` for `udfName`): keys of the user's own (Byzer's `OWNER`, a plugin's undeclared `where` key),
    passed on as given; a typo stays an error."""
    known = set(known)
    folded = {_folded(c) for c in known}
    return [k for k in keys if k not in known and _folded(k) not in folded
            and not any(one_edit_apart(k, c) for c in known)]


def closest(word: str, candidates: Iterable[str], cutoff: float = 0.75) -> str | None:
    """The candidate `word` was most likely meant to be (None when none is close), compared across
    camelCase / snake_case; of equally close spellings, the one in `word`'s own style (camelCase when
    it has a capital) wins."""
    folded = _folded(word)
    best: tuple[float, bool, float] | None = None
    found = None
    for c in set(candidates):
        if c == word:
            continue
        score = (difflib.SequenceMatcher(None, folded, _folded(c)).ratio(),
                 (c != c.lower()) == (word != word.lower()), difflib.SequenceMatcher(None, word, c).ratio())
        if score[0] >= cutoff and (best is None or score > best):
            best, found = score, c
    return found


def did_you_mean(word: str, candidates: Iterable[str] | Mapping[str, str]) -> str:
    """`"did you mean 'x'? "` when a candidate is close to `word`, else `""` (to put before a list of
    the valid ones). A dotted key (`sft.int.max_seq_lenght`) is matched on its last part.

    `candidates` as a mapping (every accepted spelling -> the name a list of valid ones shows for it) names
    only listed names, written in `word`'s style (`learningRat` -> `learningRate`, `learning_rat` ->
    `learning_rate`, `udfname` -> the listed `udfName`): the same name, as the user spells names."""
    head, dot, last = word.rpartition(".")
    found = closest(last, candidates)
    if found and isinstance(candidates, Mapping):
        found = in_style_of(last, candidates[found])
    return f"did you mean {head + dot + found!r}? " if found else ""


def in_style_of(word: str, name: str) -> str:
    """`name` in `word`'s spelling: camelCase when `word` has a capital, snake_case when it has a `_`, else as
    it is (`in_style_of("learning_rat", "learningRate")` is `learning_rate`)."""
    if any(c.isupper() for c in word) and "_" in name:
        head, *rest = name.split("_")
        return head + "".join(p[:1].upper() + p[1:] for p in rest)
    if "_" in word and name != name.lower():
        return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name))
    return name


class ByzerError(Exception):
    """Base of every error a user can cause and fix.

    An error that suggests an option names it the Python client's and SQL's way (`reconnect=True (SQL:
    reconnect="true")`) and records, in `options`, each option's keyword and the words that spell it
    in the message; another face shows `spelled()` with its own spellings (the CLI: `--reconnect`)."""

    options: Mapping[str, str] = {}  # keyword -> the words of the message that spell it

    def suggesting(self, **options: str) -> Self:
        """Record the options the message suggests (keyword=the words that spell it); returns self."""
        self.options = {**self.options, **options}
        return self

    line: int | None = None  # where in a script the error happened (`at`), when a statement raised it
    column: int | None = None

    def at(self, line: int, column: int, snippet: str = "") -> Self:
        """This error said at `line`, `column` of a script (1-based), as a SqlError says it: the message
        becomes `line 3, column 1: <message>`, then the script's line and a caret; returns self. An error
        that already has a place keeps it."""
        if self.line is not None:
            return self
        self.message = str(self)  # the message without its place, as a SqlError's `message`
        self.line, self.column, self.snippet = line, column, snippet
        text = f"line {line}, column {column}: {self.message}"
        if snippet:
            text += f"\n  {snippet}\n  {_caret_indent(snippet, column)}^"
        self.args = (text,)
        return self

    def spelled(self, spellings: Mapping[str, str]) -> str:
        """The message with each suggested option that `spellings` knows in that face's spelling."""
        text = str(self)
        for keyword, words in self.options.items():
            if keyword in spellings:
                text = text.replace(words, spellings[keyword])
        return text


class ConfigError(ByzerError, ValueError):
    """An option is unknown, missing or has a value of the wrong type or range."""


class UnknownOptionError(ConfigError):
    """An option no one understands. `valid`: the options listed (one spelling each, an alias that is another
    word in brackets: `numTrainEpochs (or epochs)`); `candidates`: every accepted spelling and alias (default:
    `valid`), for the "did you mean" before the list, or a mapping of each to the listed name it stands for
    (the suggestion then names only listed names, in the user's spelling: `did_you_mean`).

    `keys`: every unknown key of the statement or call (`key` is the first); `also`: the other problems found
    in the same options (further unknown keys, bad values), all said in the one message."""

    def __init__(self, where: str, key: str, valid: Iterable[str], *,
                 candidates: Iterable[str] | Mapping[str, str] | None = None, keys: Iterable[str] = (),
                 also: Iterable[str] = ()):
        self.key = key
        self.keys = list(dict.fromkeys([key, *keys]))
        self.valid = sorted(set(valid))
        self.also = list(also)
        if isinstance(candidates, Mapping):
            self.candidates = {**{v: v for v in self.valid}, **candidates}
        else:
            self.candidates = sorted(set(self.valid if candidates is None else candidates) | set(self.valid))
        first = f"unknown {where} option {key!r}; {did_you_mean(key, self.candidates)}"
        if self.also:
            first = first.rstrip() + ("" if first.rstrip().endswith("?") else ";") + " " + "; ".join(self.also) + "; "
        super().__init__(f"{first}valid options: {_choices(self.valid)}")


def unknown_key(key: str, candidates: Iterable[str] | Mapping[str, str]) -> str:
    """One unknown key as a message of several problems says it: `unknown option 'x' (did you mean 'y'?)`."""
    hint = did_you_mean(key, candidates).strip().removesuffix("?")
    return f"unknown option {key!r}" + (f" ({hint}?)" if hint else "")


class MissingPackageError(ConfigError, ImportError):
    """An option needs a Python package that is not installed. `option`: the option (as the user wrote it
    or its field); `package`: the package's pip name."""

    def __init__(self, message: str, *, option: str, package: str):
        self.option, self.package = option, package
        super().__init__(message)


class DeviceNotAvailableError(ConfigError):
    """An option needs a device (a CUDA GPU) the cluster does not have. `option`: the option asking for it."""

    def __init__(self, message: str, *, option: str):
        self.option = option
        super().__init__(message)


class ClusterTooSmallError(ConfigError):
    """A job needs more CPUs / GPUs than the whole cluster has, so Ray would queue it forever. `need` and
    `have`: the resources asked ({"CPU": 12.0, "GPU": 12.0}) and the cluster's totals."""

    def __init__(self, message: str, *, need: Mapping[str, float], have: Mapping[str, float]):
        self.need, self.have = dict(need), dict(have)
        super().__init__(message)


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
            f"unknown pretrained_model_type {name!r}; {did_you_mean(name, self.known)}"
            f"known model types: {_choices(self.known)} "
            "(a third-party plugin registers itself in the 'byzer_like.models' entry-point group)"
        )

    def __str__(self) -> str:  # KeyError would quote the whole message
        return self.args[0]


class UnsupportedModelTypeError(PluginError, NotImplementedError):
    """A model type Byzer-LLM has that cannot run here (a multimodal, speech or image model; a saas/* service
    that does not speak the OpenAI protocol); the message names the kinds that can."""

    def __init__(self, name: str, kind: str, supported: str):
        self.name = name
        self.kind = kind
        super().__init__(f"pretrained_model_type {name!r} is {kind}, which byzer-like cannot serve; supported: {supported}")


class ModelDirError(ByzerError, FileNotFoundError):
    """A model directory is missing or does not hold a loadable model."""


class DeployError(ByzerError, RuntimeError):
    """A deployment could not be created, bound or removed."""


class EngineEnvironmentError(DeployError):
    """The Python environment a serving engine needs (vLLM's own venv) is missing or broken; the message
    names the command that builds it."""


class DuplicateDeploymentError(DeployError):
    def __init__(self, udf_name: str):
        self.udf_name = udf_name
        reconnect = 'reconnect=True (SQL: reconnect="true")'
        replace = 'replace=True (SQL: replace="true")'
        super().__init__(f"a model named {udf_name!r} is already deployed; pass {reconnect} "
                         f"to use it as it is, {replace} to deploy anew over it, or undeploy it first")
        self.suggesting(reconnect=reconnect, replace=replace)


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


def raise_row_error(result: dict, index: int | None = None) -> None:
    """Raise the typed error of a per-request result `{"error", "error_code"}` (InvalidRequestError, naming
    request `index` when given); a result without an error passes."""
    if "error" in result:
        where = f" (request {index})" if index is not None else ""
        raise InvalidRequestError(f"{result['error']}{where}", code=result.get("error_code", "invalid_request"), index=index)


class PromptTooLongError(InvalidRequestError):
    def __init__(self, message: str, index: int | None = None):
        super().__init__(message, code="prompt_too_long", index=index)


class BackPressureError(InferenceError):
    """The model's request queue is full: retry later, or deploy more workers."""


class RequestTimeoutError(InferenceError, TimeoutError):
    """A model call did not finish in time."""


class NotSupportedError(ByzerError, NotImplementedError):
    """The plugin or the current version does not offer this operation."""


class NotAChatModelError(NotSupportedError):
    """A chat or completion call on a sentence-embedding model (bge, m3e): it makes vectors, not answers."""

    def __init__(self, model_type: str):
        self.model_type = model_type
        super().__init__(
            f"model type {model_type!r} is a sentence-embedding model: it turns text into vectors and cannot chat "
            'or generate text; call it with llm_param(map("embedding_query", text)) in SQL, emb / emb_query in '
            "Python, or POST /v1/embeddings")


class RewardModelCallError(NotSupportedError):
    """A chat, completion or embedding call on a reward model: it gives one score per answer, not text."""

    def __init__(self, model_type: str = "reward"):
        self.model_type = model_type
        super().__init__(
            f"model type {model_type!r} is a reward model: it scores answers and cannot chat, generate text or "
            'embed; call it with llm_param(map("instruction", question, "response", answer)) in SQL (a DOUBLE '
            "per row), ByzerLLM.score(udf, pairs) in Python, or POST /v1/score")


# -- errors that point into a script ----------------------------------------------------------------
class SqlError(ByzerError):
    """An error at a place in a script. `line` and `column` are 1-based, in the original script;
    `snippet` is that source line. `str()` shows the message, the line and a caret under the column:

        line 3, column 26: expected `as <table>` after the load path, found `questions`
          load json.`data/q.jsonl` questions;
                                   ^
    """

    def __init__(self, message: str, line: int, column: int, snippet: str = ""):
        super().__init__(message, line, column, snippet)  # all in args, so the error pickles
        self.message = message
        self.line = line
        self.column = column
        self.snippet = snippet

    def __str__(self) -> str:
        head = f"line {self.line}, column {self.column}: {self.message}"
        if not self.snippet:
            return head
        return f"{head}\n  {self.snippet}\n  {_caret_indent(self.snippet, self.column)}^"


class SqlSyntaxError(SqlError, ValueError):
    """A script cannot be parsed."""


class UnknownTableError(SqlError, KeyError):
    """A statement names a table the session does not have."""

    def __str__(self) -> str:
        return SqlError.__str__(self)


class UnknownFunctionError(SqlError):
    """A select calls a function that is neither SQL's, a helper, nor a deployed model."""


class ExecutionError(SqlError):
    """DuckDB refused a select (an unknown column, a type mismatch...)."""


def _caret_indent(line: str, column: int) -> str:
    """Blanks as wide on screen as the first `column - 1` characters of `line`: tabs stay tabs,
    wide (CJK) characters take two blanks, and a column past the line's end is padded."""
    before = line[: column - 1].ljust(column - 1)
    return "".join(_blank(c) for c in before)


def _blank(c: str) -> str:
    if c == "\t":
        return c
    return "  " if unicodedata.east_asian_width(c) in ("W", "F") else " "


class RowError(ByzerError, ValueError):
    """A row a model could not answer (prompt too long, bad parameter), with its row number (1-based)."""

    def __init__(self, model: str, row: int, message: str, instruction: str | None):
        self.row = row
        shown = "" if instruction is None else f" (instruction: {instruction[:60]!r})"
        super().__init__(f"model {model!r} failed on row {row}{shown}: {message}; "
                         "set llm_on_error = \"null\" to get an error value instead")


# -- tables on disk ---------------------------------------------------------------------------------
class TableExistsError(ByzerError, FileExistsError):
    """`save` with errorIfExists onto a path that already exists."""


class DataFileError(ByzerError, ValueError):
    """A file to load is missing, empty or not in the format named."""


# -- jobs and the model registry --------------------------------------------------------------------
class JobError(ByzerError, RuntimeError):
    """A training job failed, or cannot be stopped or resumed in its state."""


class JobNotFoundError(ByzerError, KeyError):
    """No job of that id in the workspace's catalog; the message lists recent ones."""

    def __init__(self, job_id: str, known: list[str]):
        shown = ", ".join(known[:10]) or "(none yet)"
        super().__init__(f"no job {job_id!r} in this workspace's catalog; recent jobs: {shown}")

    def __str__(self) -> str:
        return str(self.args[0])


# how to register the packaged SmolLM2 from SQL (what `byzer-like models import smollm2` does)
IMPORT_SQL = ('run command as LLM.`` where action="convert" and sourceFormat="gguf" and sourcePath="smollm2" '
              'and outputTable="smollm2"')


class ModelNotFoundError(ByzerError, KeyError):
    """No registered model (or version) of that reference; the message lists the registered ones."""

    def __init__(self, ref: str, known: list[str]):
        shown = ", ".join(known) or "(none yet)"
        super().__init__(f"no registered model {ref!r}; registered models: {shown}. Import one with "
                         f"`byzer-like models import smollm2` (SQL: {IMPORT_SQL}), or train one with outputTable=\"name\"")

    def __str__(self) -> str:
        return str(self.args[0])


class ModelExistsError(ByzerError, FileExistsError):
    """An outputTable names a registered model and overwrite was not asked for."""


class AdapterNotFoundError(ConfigError, KeyError):
    """A request asks deployment `udf_name` for an adapter the registry does not hold (or a whole model, not
    an adapter); the message lists the adapters registered for that deployment's base, the closest first."""

    def __init__(self, ref: str, udf_name: str, known: Iterable[str], *, why: str | None = None):
        self.ref, self.udf_name = ref, udf_name
        self.known = sorted(set(known))
        names = {k.split("@", 1)[0] for k in self.known}
        super().__init__(f"{why or f'no registered LoRA adapter {ref!r}'}; {did_you_mean(ref.split('@', 1)[0], names)}"
                         f"adapters registered for the base of {udf_name!r}: {_choices(self.known)}")

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class AdapterBaseError(ConfigError):
    """An adapter was trained on another base model than the deployment serves; `needs` names that base (its
    registry reference when it is registered, else its directory)."""

    def __init__(self, ref: str, udf_name: str, needs: str, serves: str):
        self.ref, self.udf_name, self.needs, self.serves = ref, udf_name, needs, serves
        super().__init__(f"adapter {ref!r} was trained on base model {needs}, but deployment {udf_name!r} serves "
                         f"{serves}; call it on a deployment of {needs}, or train the adapter on {serves}")


class AdapterRankError(ConfigError):
    """An adapter's LoRA rank is above what the deployment's engine was started for (vLLM's
    `vllm.max_lora_rank`); the message names the option and the value to redeploy with."""

    def __init__(self, message: str, ref: str = "", rank: int = 0, max_rank: int = 0):
        self.ref, self.rank, self.max_rank = ref, rank, max_rank
        super().__init__(message)


# -- importing, converting and quantizing models ----------------------------------------------------
class ConvertError(ByzerError, RuntimeError):
    """A model could not be imported, converted or quantized; nothing was registered or left behind."""


class ModelFileError(ConvertError, ValueError):
    """A model file is not what was expected: not a GGUF file, a truncated one, a file that does not exist."""


class UnsupportedArchitectureError(ModelFileError):
    """A GGUF file holds an architecture that transformers cannot load from GGUF; the message lists those it can."""

    def __init__(self, path: str, architecture: str, supported: Iterable[str]):
        self.architecture = architecture
        self.supported = sorted(set(supported))
        super().__init__(f"{path} holds a {architecture!r} model, which transformers cannot load from GGUF; "
                         f"architectures it can: {_choices(self.supported)}")


class CheckpointError(ConvertError, FileNotFoundError):
    """A checkpoint folder holds no DeepSpeed ZeRO checkpoint, or not the tag asked for."""


class QuantizeError(ConvertError):
    """A quantization method failed, or its library is not installed or cannot run on this machine."""


# -- evaluation and gated promotion -----------------------------------------------------------------
class UnknownMetricError(ConfigError):
    """An evaluation metric no one knows; the message lists the valid ones (and the closest)."""

    def __init__(self, name: str, valid: Iterable[str]):
        self.name = name
        self.valid = sorted(set(valid))
        super().__init__(f"unknown metric {name!r}; {did_you_mean(name, self.valid)}valid metrics: {_choices(self.valid)}")


class EvalSetError(ConfigError):
    """An eval table cannot serve the metrics asked for: no prompt column, no reference column for a
    reference metric, no rows."""


class JudgeNotDeployedError(ModelNotDeployedError):
    """The model named as judge is not deployed; deploy it first (it is never deployed on the fly)."""

    def __init__(self, udf_name: str, deployed: Iterable[str]):
        super().__init__(udf_name, deployed)
        self.args = (f"judge {udf_name!r} is not deployed (deploy it first: run command as LLM.`` where "
                     f"action=\"infer\" and ... and udfName=\"{udf_name}\"); deployed models: {_choices(self.deployed)}",)


class EvalNotFoundError(ByzerError, KeyError):
    """No stored evaluation matches (a model version on an eval set); the message says how to make one."""

    def __str__(self) -> str:
        return str(self.args[0])


class PromotionError(ConfigError):
    """A `promote` statement that cannot be decided: a condition that does not parse, a metric the
    evaluations do not have. Nothing is promoted. (A condition that does not hold is no error: the
    result row says which failed and by how much.)"""


# -- Python flows and modules -----------------------------------------------------------------------
class FlowError(ByzerError):
    """A flow (`byzer_like.flows`: pipeline, parallel, diverter, switch, warp) or a module could not be built or
    run. `path`: the stage the error names (`root.proc.branch1`), when it names one."""

    path: str | None = None


class FlowDefinitionError(FlowError, ValueError):
    """A flow built wrong: a stage that is not callable, a duplicate stage name, a bound `root.` / `p.` reference
    to a stage that runs later, beside or around the bind (or to no stage at all), a switch without
    condition-branch pairs, an unknown registry group. Raised while the flow is built where it can be."""


class UnpicklableStageError(FlowDefinitionError, TypeError):
    """A stage asked to run as a Ray task (`flows.remote(f, num_cpus=...)`) cannot be pickled, so no Ray worker
    could receive it; raised when the stage is made."""


class FlowInputError(FlowError, ValueError):
    """A flow got an input it cannot route: a diverter or warp given no sequence, a diverter given as many
    inputs as it has not branches, a switch value no case matches and no `'default'` branch."""

    def __init__(self, message: str, *, path: str | None = None):
        self.path = path
        super().__init__(message)


class StageError(FlowError, RuntimeError):
    """A stage of a flow raised. `path` names the stage (`root.proc.branch1`); `error` (also `__cause__`) is what
    it raised."""

    def __init__(self, path: str, error: BaseException):
        super().__init__(path, error)  # both in args, so the error pickles
        self.path, self.error = path, error

    def __str__(self) -> str:
        return f"stage {self.path} raised {type(self.error).__name__}: {self.error}"
