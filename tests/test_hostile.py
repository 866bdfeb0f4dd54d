"""Hostile input: over a thousand generated values used as load / save paths, table names, model
(udf) names and option values, through the SQL session and the Python client, without Ray.

Each use either works inside the workspace or is refused with a typed `ByzerError` whose message
says what to do. Around every test: a canary folder outside the workspace (files holding MARKER, in
every format `load` reads) and the workspace's parent are snapshot before and after and must not
change; no loaded table may contain MARKER; a canary file that every shell payload would create
(`touch <root>/PWNED`) must never exist; and an audit hook sees no process started and no Python
file access outside the workspace. Deploys never start: the cluster calls are replaced by recorders,
and a deploy that gets through every check must name a valid model and a model inside the workspace.
(The audit hook stays installed for the rest of the process, as Python's are, but records only while a
guarded test runs.) Hostile model directories: pickle-only weights and remote code are refused unless
opted in, and are provably never unpickled or imported. The holes this suite found in `load` (links
and glob characters inside a loaded folder, a broken model config, a file where a folder is needed)
are kept at the end as regression tests.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import stat
import sys
import urllib.parse
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from byzer_like import ByzerLLM
from byzer_like.config import UDF_NAME, check_udf_name
from byzer_like.session import Session
from byzer_like.errors import ByzerError, ModelNotDeployedError, UnknownOptionError, WorkspacePathError
from byzer_like.sql.errors import SqlError
from byzer_like.sql.grammar import backquote, quote

MARKER = "CANARY-6d1f0c"
_WATCH: dict = {"on": False, "root": None, "ws": None, "events": []}
_EXEC_EVENTS = ("os.system", "subprocess.Popen", "os.posix_spawn", "os.exec", "os.spawn", "os.fork", "os.forkpty",
                "pty.spawn", "os.startfile")
_FILE_EVENTS = ("open", "os.listdir", "os.scandir", "os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.symlink",
                "os.link", "shutil.rmtree", "shutil.copyfile", "os.chmod", "os.chown", "os.utime", "os.truncate")


def _audit(event: str, args: tuple) -> None:
    """Records processes started and Python-level file access under the arena but outside the workspace."""
    if not _WATCH["on"]:
        return
    if event.startswith(_EXEC_EVENTS):
        _WATCH["events"].append((event, repr(args)[:200]))
    elif event in _FILE_EVENTS and args and isinstance(args[0], (str, bytes, os.PathLike)):
        try:
            path = os.path.realpath(os.fsdecode(os.fspath(args[0])))
        except (TypeError, ValueError, OSError):
            return
        root, ws = _WATCH["root"], _WATCH["ws"]
        if (path == root or path.startswith(root + os.sep)) and not (path == ws or path.startswith(ws + os.sep)):
            _WATCH["events"].append((event, path))


sys.addaudithook(_audit)


# -- the hostile values -------------------------------------------------------------------------------
def hostile_values(root: Path) -> list[str]:
    canary, pwned = root / "canary", root / "PWNED"
    base = [
        # traversal
        "..", "../", "../..", "../../etc/passwd", "../canary/secret.json", "../canary", "data/../../canary/secret.json",
        "./../canary/secret.csv", "data/../../../../../../etc/shadow", "....//....//etc/passwd", "..;/..;/etc/passwd",
        ".../...//canary", "data/./../../canary/sub", "data/q.json/../../../canary/secret.txt",
        # absolute and home
        "/etc/passwd", "/etc/shadow", "/", "//etc/passwd", "/proc/self/environ", "/dev/zero", "/root/.ssh/id_rsa",
        str(canary / "secret.json"), str(canary), str(canary / "new_folder"), str(root), str(root / "escape"),
        str(root / "ws" / ".." / "canary" / "secret.parquet"), "~", "~root", "~/.ssh", "~root/.bashrc", "~nobody/x",
        # schemes
        "file:///etc/passwd", f"file://{canary}/secret.json", "s3://bucket/key.json", "hdfs://nn:8020/x", "gs://b/o",
        "http://127.0.0.1:1/x.json", "https://example.com/secret.csv", "ftp://x/y", "jar:file:/x!/y",
        # encodings and lookalikes
        "%2e%2e/%2e%2e/etc/passwd", "..%2f..%2fetc%2fpasswd", "%252e%252e%252fetc", "..%c0%af..%c0%afetc",
        "\u2025/\u2025/etc/passwd", "\uff0e\uff0e/\uff0e\uff0e/etc/passwd", "\u2215etc\u2215passwd", "..\u2216..\u2216etc",
        "\u202edcba", "da\u200bta/q.json", "ｄａｔａ/q.json", "dаta/q.json",  # Cyrillic а
        # NUL bytes and control characters
        "\x00", "data/q.json\x00.txt", "\x00/etc/passwd", "a\x01b", "\x1b[31mred", "tab\there",
        # Windows
        "C:\\Windows\\System32", "C:/Windows/win.ini", "..\\..\\etc\\passwd", "\\\\server\\share\\x", "CON", "NUL",
        "aux.json", "a:b", "x::$DATA",
        # symlinks that point out of the workspace (made by the fixture)
        "link_dir", "link_dir/secret.json", "link_dir/sub", "link_dir/../canary", "links/../link_dir/new",
        # shell metacharacters
        f"$(touch {pwned})", f"`touch {pwned}`", f"; touch {pwned}", f"| touch {pwned}", f"&& touch {pwned}",
        f"x; touch {pwned} #", f"$(touch${{IFS}}{pwned})", f"\ntouch {pwned}", "${HOME}", "$HOME", "${PATH}", "$((7*7))",
        # templates
        "{{7*7}}", "${7*7}", "#{7*7}", "<%= 7*7 %>", "%(x)s", "{0}", "{x.__class__}", "%s%s%s%n",
        # SQL injection, quotes and backquotes
        "x'; drop table t; --", 'x"; drop table t; --', "x`; drop table t; --", "' or '1'='1", "'", '"', "`", "``",
        "'''", '"""', "x' as t; save overwrite q as json.`out", "*/ select 1 /*", "-- c", "/*", "a;b", "q; !show tables",
        # newline injection
        f"a\nsave overwrite q as json.`{canary}/nl`", "a\r\nb", "a\rb", "x\n;\n!byzerllm setup single",
        # numbers
        "nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-1", "0", "-0", "9" * 400, "0x7fffffff", "1_000", "٣",
        # globs and odd names
        "*", "**/*.json", "data/*", "[a-z]*", "?", ".", "./", "", " ", "-", "--help", "-rf /", ".hidden", "a b",
        # long
        "a" * 255, "a" * 256, "a" * 5000, "x/" * 2100, "é" * 200, "祝" * 100,
    ]
    transforms = [
        lambda v: v,
        lambda v: "data/" + v,
        lambda v: v + "/x.json",
        lambda v: urllib.parse.quote(v, safe=""),
        lambda v: v.replace("/", "\\"),
        lambda v: "./" + v,
        lambda v: v + "\x00",
        lambda v: v.upper(),
        lambda v: "out/" + v + "/part",
        lambda v: v + "\n",
        lambda v: " " + v,
        lambda v: v + v,
    ]
    seen: dict[str, None] = {}
    for value, transform in itertools.product(base, transforms):
        seen.setdefault(transform(value), None)
    return list(seen)


# -- the arena: a workspace, a canary folder beside it, symlinks out ---------------------------------
class Arena:
    def __init__(self, root: Path):
        self.root = root
        self.ws = root / "ws"
        self.canary = root / "canary"
        self.pwned = root / "PWNED"
        self.values = hostile_values(root)
        self.connects: list = []
        self.deploys: list[dict] = []
        self.failures: list[str] = []
        self.counts: dict[str, int] = {}

    def build(self) -> None:
        rows = pa.table({"secret": [MARKER, MARKER]})
        self.canary.mkdir(parents=True)
        (self.canary / "sub").mkdir()
        (self.canary / "secret.json").write_text(f'{{"secret": "{MARKER}"}}\n')
        (self.canary / "secret.jsonl").write_text(f'{{"secret": "{MARKER}"}}\n')
        (self.canary / "secret.txt").write_text(MARKER + "\n")
        (self.canary / "sub" / "secret.json").write_text(f'{{"secret": "{MARKER}"}}\n')
        (self.canary / "config.json").write_text(json.dumps({"model_type": "llama", "secret": MARKER}))
        (self.canary / "model.safetensors").write_bytes(b"")
        (self.canary / "tokenizer.json").write_text("{}")
        pacsv.write_csv(rows, self.canary / "secret.csv")
        pq.write_table(rows, self.canary / "secret.parquet")
        data = self.ws / "data"
        data.mkdir(parents=True)
        (data / "q.json").write_text("".join(json.dumps({"id": i, "q": f"question {i}"}) + "\n" for i in range(3)))
        model = self.ws / "models" / "fake-llama"  # passes check_model_dir; never loaded (deploys are recorded)
        self.model = str(model)  # the client reads relative paths from the current directory: give it this one whole
        model.mkdir(parents=True)
        (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
        (model / "model.safetensors").write_bytes(b"")
        (model / "tokenizer.json").write_text("{}")
        (self.ws / "links").mkdir()
        os.symlink(self.canary, self.ws / "link_dir")  # a folder link out: refused when named, not followed by rglob
        os.symlink(self.canary, self.ws / "links" / "out")

    def snapshot(self) -> dict[str, tuple]:
        """Everything under the workspace's parent except the workspace's own content."""
        out = {}
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            if Path(dirpath) == self.root and "ws" in dirnames:
                dirnames.remove("ws")
            for name in dirnames + filenames:
                p = Path(dirpath, name)
                st = os.lstat(p)
                digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None
                link = os.readlink(p) if stat.S_ISLNK(st.st_mode) else None
                out[str(p.relative_to(self.root))] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, digest, link)
        for link in (self.ws / "link_dir", self.ws / "links" / "out"):
            out[f"link {link.name}"] = (os.readlink(link),)
        return out

    # -- running one hostile use --------------------------------------------------------------------
    def fail(self, what: str) -> None:
        if len(self.failures) < 40:
            self.failures.append(what)

    def run(self, session: Session, statement: str, kind: str):
        """Run a script; its results, or the typed error it raised (checked)."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        try:
            results = session.sql(statement)
        except ByzerError as e:
            self.check_refusal(e, statement)
            return e
        except Exception as e:  # noqa: BLE001 - exactly what this test hunts
            self.fail(f"{statement[:300]!r} raised {type(e).__name__}: {str(e)[:300]}")
            return e
        for r in results:
            if r.table is not None and MARKER in json.dumps(r.table.to_pylist(), default=str):
                self.fail(f"{statement[:300]!r} returned the canary's content")
        return results

    def call(self, fn, *args, kind: str, **kwargs):
        self.counts[kind] = self.counts.get(kind, 0) + 1
        try:
            return fn(*args, **kwargs)
        except ByzerError as e:
            self.check_refusal(e, repr(args)[:300])
            return e
        except Exception as e:  # noqa: BLE001
            self.fail(f"{fn.__name__}{args!r:.300} raised {type(e).__name__}: {str(e)[:300]}")
            return e

    def check_refusal(self, e: ByzerError, what: str) -> None:
        message = str(e)
        if not message.strip() or "Traceback" in message:
            self.fail(f"{what}: {type(e).__name__} without a usable message: {message!r}")
        if isinstance(e, SqlError) and not (e.line >= 1 and e.column >= 1):
            self.fail(f"{what}: {type(e).__name__} without a position")
        if isinstance(e, WorkspacePathError) and not any(
                hint in message for hint in ("BYZER_LIKE_ALLOWED_ROOTS", "shorter", "give a", "save into")):
            self.fail(f"{what}: a refused path does not say what to do: {message}")
        if isinstance(e, UnknownOptionError) and "valid options" not in message:
            self.fail(f"{what}: an unknown option does not list the valid ones: {message}")


@pytest.fixture(scope="module")
def arena(tmp_path_factory):
    a = Arena(tmp_path_factory.mktemp("hostile"))
    a.build()
    _WATCH.update(root=str(a.root.resolve()), ws=str(a.ws.resolve()), events=[])
    with pytest.MonkeyPatch.context() as mp:
        from byzer_like import cluster
        from byzer_like.serving import manager

        mp.delenv("BYZER_LIKE_ALLOWED_ROOTS", raising=False)
        mp.delenv("RAY_ADDRESS", raising=False)
        from byzer_like.runtime import Runtime

        mp.setattr(Runtime, "connect", lambda self: a.connects.append(1) or {})
        mp.setattr(cluster, "reachable", lambda *args, **kwargs: True)
        mp.setattr(manager, "list_deployments", lambda: {"fake_model": "RUNNING"})
        mp.setattr(manager, "deploy", lambda spec, setup, **kw: a.deploys.append(spec))

        def undeploy(name):
            raise ModelNotDeployedError(name, ["fake_model"])

        mp.setattr(manager, "undeploy", undeploy)
        yield a
    print(f"\n{len(a.values)} hostile values, {sum(a.counts.values())} uses: "
          + ", ".join(f"{k} {v}" for k, v in sorted(a.counts.items())))


@pytest.fixture
def guarded(arena):
    """Snapshot before; after: nothing changed outside the workspace, no PWNED, no process, no failures."""
    before = arena.snapshot()
    arena.failures.clear()
    _WATCH["events"].clear()
    _WATCH["on"] = True
    try:
        yield arena
    finally:
        _WATCH["on"] = False
    assert not arena.pwned.exists(), "a shell payload ran"
    assert not _WATCH["events"], _WATCH["events"][:10]
    after = arena.snapshot()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"changed outside the workspace: {changed[:10]}"
    assert not arena.failures, "\n".join(arena.failures)


def _session(arena: Arena) -> Session:
    """A session over the arena's workspace with table `q` (read from a folder no hostile value names:
    `save overwrite` onto `data/` is allowed, and some values do that)."""
    source = arena.ws / "seed_source_q"
    source.mkdir(exist_ok=True)
    (source / "q.json").write_text("".join(json.dumps({"id": i, "q": f"question {i}"}) + "\n" for i in range(3)))
    llm = ByzerLLM(workspace=arena.ws)
    llm.runtime.generate = lambda name, requests, **kw: [{"output": "fine", "metadata": {}} for _ in requests]
    llm.runtime.meta = lambda name, **kw: {}  # a chat model (a select asks each deployment what it serves)
    s = Session(llm, progress=False)
    s.sql("load json.`seed_source_q/q.json` as q;")
    return s


def _used_each(arena: Arena, *kinds: str) -> None:
    for kind in kinds:
        assert arena.counts.get(kind, 0) >= len(arena.values), (kind, arena.counts.get(kind))


def _inside(arena: Arena, path: str) -> bool:
    real = os.path.realpath(path)
    ws = str(arena.ws.resolve())
    return real == ws or real.startswith(ws + os.sep)


def test_there_are_over_a_thousand_hostile_values(arena):
    assert len(arena.values) >= 1000, len(arena.values)


# -- paths -------------------------------------------------------------------------------------------
LOAD_FORMATS = ("json", "csv", "text", "parquet", "jsonl", "model")
SAVE_FORMATS = ("json", "csv", "text", "parquet")
SAVE_MODES = ("overwrite", "append", "errorIfExists", "ignore")


def test_load_paths(guarded):
    a = guarded
    s = _session(a)
    for i, value in enumerate(a.values):
        fmt = LOAD_FORMATS[i % len(LOAD_FORMATS)]
        result = a.run(s, f"load {fmt}.{backquote(value)} as t;", "load path")
        if isinstance(result, list):  # loaded: from inside the workspace
            loaded = result[-1].message.rsplit(" from ", 1)[-1]
            if not _inside(a, loaded):
                a.fail(f"load {value!r} read {loaded}")
        if i % 3 == 0:  # pasted as it is, unescaped: parse errors are typed too
            a.run(s, f"load {fmt}.`{value}` as t;", "load path (raw)")
        if i % 5 == 0:  # through a variable, as Byzer scripts do
            a.run(s, f"set p = {quote(value)};\nload {fmt}.`${{p}}` as t;", "load path (variable)")
    s.close()
    _used_each(a, "load path")


def test_save_paths(guarded):
    a = guarded
    s = _session(a)
    s.sql("select q as value from q as lines;")
    for i, value in enumerate(a.values):
        fmt, mode = SAVE_FORMATS[i % len(SAVE_FORMATS)], SAVE_MODES[i % len(SAVE_MODES)]
        table = "lines" if fmt == "text" else "q"
        result = a.run(s, f"save {mode} {table} as {fmt}.{backquote(value)};", "save path")
        if isinstance(result, list):
            written = result[-1].table.column("path")[0].as_py()
            if not _inside(a, written) or os.path.realpath(written) == str(a.ws.resolve()):
                a.fail(f"save {value!r} wrote {written}")
        if i % 3 == 0:
            a.run(s, f"save overwrite q as json.`{value}`;", "save path (raw)")
    assert (a.ws / "models" / "fake-llama" / "config.json").is_file()  # the workspace survived
    s.close()
    _used_each(a, "save path")


def test_save_onto_the_workspace_itself_is_refused(guarded):
    """`save overwrite t as json.`.`` used to replace the whole workspace (staging beside it, outside the roots)."""
    s = _session(guarded)
    for path in (".", "./", "data/..", str(guarded.ws), "link_dir/../ws"):
        with pytest.raises(WorkspacePathError, match="save into a folder under it"):
            s.sql(f"save overwrite q as json.{backquote(path)};")
    assert (guarded.ws / "models" / "fake-llama" / "config.json").is_file()
    s.close()


def test_selects_read_no_files(guarded):
    """A select reads the session's tables only: DuckDB's table functions and file-name tables would
    read anything (also after a table was named like the function)."""
    a = guarded
    s = _session(a)
    s.sql("load json.`seed_source_q/q.json` as read_text; load json.`seed_source_q/q.json` as read_csv;")
    functions = ["read_text", "read_csv", "read_csv_auto", "read_json", "read_json_auto", "read_ndjson", "read_parquet",
                 "parquet_scan", "read_blob", "glob", "sniff_csv", "parquet_metadata", "query", "query_table",
                 "duckdb_settings", "duckdb_secrets", "iceberg_scan", "delta_scan", "sqlite_scan", "st_read"]
    targets = [str(a.canary / n) for n in ("secret.json", "secret.csv", "secret.txt", "secret.parquet")]
    targets += ["../canary/secret.json", str(a.canary / "*"), "https://127.0.0.1:1/x.csv", "file:///etc/passwd"]
    forms = ["select * from {f}('{t}') as x;", "select * from lateral {f}('{t}') as x;",
             "select * from q, lateral {f}('{t}') as x;", "select * from q lateral view {f}('{t}') v as c as x;",
             "with {f} as (select 1) select * from {f}('{t}') as x;", "select (select count(*) from {f}('{t}')) as n as x;",
             "select * from q join {f}('{t}') on true as x;", "select * from `{t}` as x;", "select * from '{t}' as x;",
             "select * from q where id in (select * from {f}('{t}')) as x;", "select * from json.`{t}` as x;"]
    for i, (f, form) in enumerate(itertools.product(functions, forms)):
        t = targets[i % len(targets)]
        result = a.run(s, form.format(f=f, t=t), "select reading a file")
        if isinstance(result, list):
            a.fail(f"{form.format(f=f, t=t)!r} ran")
    s.close()


# -- names -------------------------------------------------------------------------------------------
def test_table_names(guarded):
    a = guarded
    s = _session(a)
    forms = [
        "load json.`data/q.json` as {raw};",
        "select * from q as {raw};",
        "select * from {raw} as t;",
        "select * from {bq} as t;",
        "!desc {raw};",
        "!desc {quoted};",
        "save overwrite {raw} as json.`out/t`;",
        "run {raw} as LLM.`` where action=\"infer\";",
        "select * from q join {bq} on true as t;",
    ]
    for i, value in enumerate(a.values):
        form = forms[i % len(forms)]
        a.run(s, form.format(raw=value, bq=backquote(value), quoted=quote(value)), "table name")
    s.close()
    _used_each(a, "table name")


def test_udf_names_in_run_statements_and_deploy(guarded):
    """udfName is a SQL function name and a Ray Serve application name: anything but a plain word is
    refused before anything connects or starts."""
    a = guarded
    s = _session(a)
    for i, value in enumerate(a.values):
        a.connects.clear()
        valid = UDF_NAME.fullmatch(value) is not None
        statement = ('run command as LLM.`` where action="infer" and pretrainedModelType="llama" '
                     f'and localModelDir="models/fake-llama" and udfName={quote(value)};')
        a.run(s, statement, "udf name (SQL)")
        a.call(s.llm.deploy, a.model, "llama", value, {}, kind="udf name (client)")
        if not valid and a.connects:
            a.fail(f"deploying as {value!r} connected to the cluster before the name was refused")
    for spec in a.deploys:
        if not UDF_NAME.fullmatch(spec["udf_name"]) or not _inside(a, spec["model_dir"]):
            a.fail(f"a deploy got through with {spec['udf_name']!r} / {spec['model_dir']!r}")
    s.close()
    _used_each(a, "udf name (SQL)", "udf name (client)")


@pytest.mark.parametrize("name", ["bad name", "a-b", "é", "x" * 65, "1x", "llm_result", "llm_param", "x\n", ""])
def test_udf_name_refusal_says_what_to_do(name):
    with pytest.raises(ValueError, match="letters, digits|choose another model name"):
        check_udf_name(name)


def test_model_names_in_selects(guarded):
    """A model call names a function: anything but a deployed model or SQL function is a typed error
    (the fake cluster has one model, `fake_model`)."""
    a = guarded
    s = _session(a)
    forms = ["select {raw}(llm_param(map('instruction', q))) as r from q as t;",
             "select {bq}(llm_param(map('instruction', q))) as r from q as t;",
             "select llm_result(fake_model(llm_param(map('instruction', {quoted})))) as r from q as t;",
             "!byzerllm model exists {quoted};",
             "!byzerllm model remove {quoted};"]
    for i, value in enumerate(a.values):
        form = forms[i % len(forms)]
        a.run(s, form.format(raw=value, bq=backquote(value), quoted=quote(value)), "model name")
    answered = s.sql("select llm_result(fake_model(llm_param(map('instruction', q)))) as a from q as t;")[-1].table
    assert answered.column("a").to_pylist() == ["fine"] * 3
    s.close()
    _used_each(a, "model name")


# -- option values -----------------------------------------------------------------------------------
SETUP_KEYS = ("num_workers", "cpus_per_worker", "num_gpus", "max_batch_size", "request_timeout_s", "mode",
              "max_queued_requests")
DEPLOY_KEYS = ("dtype", "device", "trust_remote_code", "allow_pickle_weights", "load_in_4bit", "reconnect",
               "modelTable", "adapter_dir", "localModelDir", "action", "pretrainedModelType")
LLM_PARAM_KEYS = ("instruction", "temperature", "top_p", "max_length", "max_new_tokens", "history", "stop",
                  "seed", "system_msg", "embedding", "generation.top_k", "generation.int.k", "generation.list.k")


def test_setup_option_values(guarded):
    a = guarded
    s = _session(a)
    for i, value in enumerate(a.values):
        key = SETUP_KEYS[i % len(SETUP_KEYS)]
        s.runtime.setup_config = type(s.runtime.setup_config)()
        a.run(s, f"!byzerllm setup {quote(f'{key}={value}')};", "setup value")
        if i % 4 == 0:
            a.run(s, f"!byzerllm setup {key}={value};", "setup value (raw)")
        if i % 2 == 0:
            a.call(s.llm.setup, key, value, kind="setup value (client)")
            a.call(s.llm.setup, value, "1", kind="setup key (client)")
        conf = s.llm.setup_config
        if not (conf.num_workers >= 1 and 0 <= conf.cpus_per_worker < float("inf") and 0 < conf.request_timeout_s < float("inf")):
            a.fail(f"setup {key}={value!r} was accepted as {conf}")
    s.close()
    _used_each(a, "setup value")


def test_deploy_option_values(guarded):
    a = guarded
    s = _session(a)
    for i, value in enumerate(a.values):
        key = DEPLOY_KEYS[i % len(DEPLOY_KEYS)]
        options = {"action": "infer", "pretrainedModelType": "llama", "localModelDir": "models/fake-llama",
                   "udfName": "hostile_ok", key: value}
        where = " and ".join(f"{backquote(k)}={quote(v)}" for k, v in options.items())
        a.run(s, f"run command as LLM.`` where {where};", "deploy option")
        params = {k: v for k, v in options.items() if k not in ("action", "pretrainedModelType", "localModelDir", "udfName")}
        a.call(s.llm.deploy, a.model, "llama", "hostile_ok", params, kind="deploy option (client)")
        a.call(s.llm.deploy, value, "llama", "hostile_ok", {}, kind="model path (client)")
        if i % 5 == 0:
            a.call(s.llm.deploy, a.model, value, "hostile_ok", {}, kind="model type (client)")
            a.call(s.llm.deploy, a.model, "llama", "hostile_ok", {value: "1"}, kind="deploy key (client)")
    for spec in a.deploys:  # whatever got through every check is a clean deployment of the model in the workspace
        if spec["udf_name"] != "hostile_ok" and not UDF_NAME.fullmatch(spec["udf_name"]):
            a.fail(f"deployed as {spec['udf_name']!r}")
        if not _inside(a, spec["model_dir"]):
            a.fail(f"deployed {spec['model_dir']!r}, outside the workspace")
    s.close()
    _used_each(a, "deploy option", "deploy option (client)", "model path (client)")


def test_llm_param_values(guarded):
    """Hostile values of `llm_param(map(...))` keys: every value under every key is turned into the
    model's request by DuckDB (one select per key over a table of the values) and then parsed as the
    model function parses it; every 8th also goes through a select that calls a (fake) deployed model."""
    from byzer_like.session.functions import build_requests

    a = guarded
    s = _session(a)
    folder = a.ws / "seed_source_values"
    folder.mkdir(exist_ok=True)
    pq.write_table(pa.table({"v": a.values}), folder / "values.parquet")
    s.sql("load parquet.`seed_source_values/values.parquet` as hostile;")
    for k, key in enumerate(LLM_PARAM_KEYS):
        for name, sql in (("value", f"select llm_param(map('instruction', 'q', {quote(key)}, v)) as p from hostile as p;"),
                          ("key", "select llm_param(map('instruction', 'q', v, v)) as p from hostile as p;")):
            if name == "key" and k:
                continue
            params = a.run(s, sql, "llm_param select")[-1].table.column("p").to_pylist()
            assert len(params) == len(a.values)
            for i, raw in enumerate(params):
                if name == "key" or i % 3 == k % 3:  # each value under a third of the keys
                    a.call(build_requests, [raw], kind=f"llm_param {name}")
    for i, value in enumerate(a.values):
        key = LLM_PARAM_KEYS[i % len(LLM_PARAM_KEYS)]
        literal = quote(value)
        if i % 8 == 0:
            a.run(s, f"select fake_model(llm_param(map('instruction', q, {quote(key)}, {literal}))) as r from q as t;",
                  "llm_param value (model call)")
            a.run(s, f"select llm_prompt({literal}, array(q, {literal})) as p from q as t;", "llm_prompt template")
    s.close()
    _used_each(a, "llm_param value", "llm_param key")


# -- hostile model directories ----------------------------------------------------------------------
def _model_dir(path: Path, *, weights=("model.safetensors",), config=None, files=()) -> Path:
    """A directory that passes every check of the llama plugin but the ones under test (never loaded)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config if config is not None else {"model_type": "llama"}))
    (path / "tokenizer.json").write_text("{}")
    for name in weights:
        (path / name).write_bytes(b"")
    for name, text in dict(files).items():
        (path / name).write_text(text)
    return path


class _Canary:
    """Unpickling this creates `path` (the proof that a weight file was unpickled)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _evil_pickle(canary: Path) -> bytes:
    import pickle

    return pickle.dumps({"model.embed_tokens.weight": _Canary(canary)})


@pytest.mark.parametrize("weights", [("pytorch_model.bin",), ("model.pt",), ("weights.pkl",), ("last.ckpt",),
                                     ("model.pth",), ("pytorch_model-00001-of-00002.bin", "model.pickle")])
def test_pickle_only_model_dirs_are_refused(tmp_path, weights):
    from byzer_like.errors import ModelDirError
    from byzer_like.plugins import registry

    d = _model_dir(tmp_path / "m", weights=weights)
    with pytest.raises(ModelDirError, match="allow_pickle_weights=true") as e:
        registry.load("llama").check_model_dir(str(d), {})
    assert weights[0] in str(e.value)
    registry.load("llama").check_model_dir(str(d), {"allow_pickle_weights": "true"})  # the opt-in


@pytest.mark.parametrize("config, files, named", [
    ({"model_type": "llama", "auto_map": {"AutoModelForCausalLM": "modeling_evil.Evil"}}, {}, "auto_map in config.json"),
    ({"model_type": "llama"}, {"tokenizer_config.json": json.dumps({"auto_map": {"AutoTokenizer": ["tok_evil.T", None]}})},
     "auto_map in tokenizer_config.json"),
    ({"model_type": "llama"}, {"modeling_evil.py": "raise SystemExit"}, "modeling_evil.py"),
    ({"model_type": "llama"}, {"configuration_evil.py": "", "tokenization_evil.py": ""}, "configuration_evil.py"),
])
def test_remote_code_model_dirs_are_refused(tmp_path, config, files, named):
    from byzer_like.errors import ModelDirError
    from byzer_like.plugins import registry

    d = _model_dir(tmp_path / "m", config=config, files=files)
    with pytest.raises(ModelDirError, match="trust_remote_code=true") as e:
        registry.load("llama").check_model_dir(str(d), {})
    assert named in str(e.value)
    registry.load("llama").check_model_dir(str(d), {"trust_remote_code": "true"})  # the opt-in


@pytest.mark.parametrize("text", ["[]", '"llama"', "null", "1", "{", "\xff\xfe", ""])
def test_config_that_is_not_a_json_object_is_a_typed_error(tmp_path, text):
    """config.json holding a list or a string used to raise AttributeError."""
    from byzer_like.errors import ModelDirError
    from byzer_like.plugins import registry

    d = _model_dir(tmp_path / "m")
    (d / "config.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(ModelDirError, match="config.json"):
        registry.load("auto").check_model_dir(str(d), {})


def test_hostile_infer_params_for_the_opt_ins_are_typed_errors(tmp_path):
    from byzer_like.errors import ConfigError
    from byzer_like.plugins import registry

    d = _model_dir(tmp_path / "m", weights=("pytorch_model.bin",))
    for value in ("$(touch x)", "yes please", "nan", "2", "tru", "\x00"):
        with pytest.raises(ConfigError, match="not a boolean"):
            registry.load("llama").check_model_dir(str(d), {"allow_pickle_weights": value})


def test_the_canary_pickle_is_live(tmp_path):
    import pickle

    pickle.loads(_evil_pickle(tmp_path / "proof"))
    assert (tmp_path / "proof").exists()


def test_pickle_weights_are_never_unpickled_without_the_opt_in(tiny_models, tmp_path):
    """Beside safetensors, an evil pytorch_model.bin is ignored (the model loads from safetensors);
    alone, it is refused before anything reads it. Either way the canary it would create never appears."""
    import shutil

    from byzer_like.errors import ModelDirError
    from byzer_like.plugins import registry

    llama = registry.load("llama")
    canary = tmp_path / "UNPICKLED"
    both = tmp_path / "both"
    shutil.copytree(tiny_models["llama"], both)
    (both / "pytorch_model.bin").write_bytes(_evil_pickle(canary))
    model, tok = llama.init_model(str(both), {}, {})
    out = llama.batch(model, tok, [{"ins": "hi", "his": [], "max_length": None, "max_new_tokens": 2, "top_p": 0.95,
                                    "temperature": 0.0, "kwargs": {}}])[0]
    assert out["metadata"]["output_tokens"] > 0 and not canary.exists()

    only = tmp_path / "only"
    shutil.copytree(tiny_models["llama"], only)
    (only / "model.safetensors").unlink()
    (only / "pytorch_model.bin").write_bytes(_evil_pickle(canary))
    with pytest.raises(ModelDirError, match="allow_pickle_weights=true"):
        llama.init_model(str(only), {}, {})
    assert not canary.exists()


def test_remote_code_is_never_imported_without_the_opt_in(tiny_models, tmp_path):
    import shutil

    from byzer_like.errors import ModelDirError
    from byzer_like.plugins import registry

    canary = tmp_path / "IMPORTED"
    d = tmp_path / "remote"
    shutil.copytree(tiny_models["llama"], d)
    (d / "modeling_evil.py").write_text(f"open({str(canary)!r}, 'w').close()\n")
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelDirError, match="trust_remote_code=true"):
        registry.load("llama").init_model(str(d), {}, {})
    assert not canary.exists()


# -- holes found in session/io.py (now closed) -----------------------------------------------------------
def test_symlinked_file_inside_a_loaded_folder_is_not_read(arena, tmp_path):
    ws = tmp_path / "ws"
    (ws / "data").mkdir(parents=True)
    (ws / "data" / "ok.json").write_text('{"a": 1}\n')
    os.symlink(arena.canary / "secret.json", ws / "data" / "leak.json")
    s = Session(ByzerLLM(workspace=ws), progress=False)
    try:
        try:
            table = s.sql("load json.`data` as t;")[-1].table
        except ByzerError:
            return  # refused: fine
        assert MARKER not in json.dumps(table.to_pylist())
    finally:
        s.close()


def test_glob_characters_in_a_path_do_not_match_other_folders(arena, tmp_path):
    ws = tmp_path / "ws"
    (ws / "data").mkdir(parents=True)
    (ws / "data" / "q.json").write_text('{"a": 1}\n')
    outside = tmp_path / "outside" / "x"
    outside.mkdir(parents=True)
    (outside / "part-00000.json").write_text(f'{{"secret": "{MARKER}"}}\n')
    os.symlink(tmp_path / "outside", ws / "gl")
    s = Session(ByzerLLM(workspace=ws), progress=False)
    try:
        s.sql("load json.`data/q.json` as q; save q as json.`g*/x`;")
        try:
            table = s.sql("load json.`g*/x/part-00000.json` as t;")[-1].table
        except ByzerError:
            return
        assert MARKER not in json.dumps(table.to_pylist())
    finally:
        s.close()


def test_save_under_a_file_is_a_typed_error(tmp_path):
    ws = tmp_path / "ws"
    (ws / "data").mkdir(parents=True)
    (ws / "data" / "q.json").write_text('{"a": 1}\n')
    s = Session(ByzerLLM(workspace=ws), progress=False)
    try:
        s.sql("load json.`data/q.json` as q;")
        with pytest.raises(ByzerError):
            s.sql("save overwrite q as json.`data/q.json/x`;")
    finally:
        s.close()


@pytest.mark.parametrize("text", [b"[]", b"{", b"\xff"])
def test_load_model_with_a_broken_config_is_a_typed_error(tmp_path, text):
    (tmp_path / "ws" / "m").mkdir(parents=True)
    (tmp_path / "ws" / "m" / "config.json").write_bytes(text)
    s = Session(ByzerLLM(workspace=tmp_path / "ws"), progress=False)
    try:
        with pytest.raises(ByzerError):
            s.sql("load model.`m` as t;")
    finally:
        s.close()
