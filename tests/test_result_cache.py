"""Resumable batch inference: with `set llm_cache="true"`, a select whose driver dies half-way and
is run again computes only the rows that had no answer yet."""
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from byzer_like.errors import ConfigError
from byzer_like.result_cache import ResultCache, model_identity

ROWS = 600
SCRIPT = """
load parquet.`data/cache_questions.parquet` as questions;
set llm_cache="{on}";
select id, cache_chat(llm_param(map("instruction", q, "temperature", "0", "max_new_tokens", "{tokens}"))) as r
  from questions order by id as answered;
save overwrite answered as parquet.`out/cache_answers`;
"""
DRIVER = """
import sys
from byzer_like import ByzerLLM
ByzerLLM().sql(sys.argv[1])
"""


def test_cache_keys_and_rows(tmp_path):
    store = ResultCache(tmp_path / "c.sqlite")
    ident = model_identity({"udf_name": "m", "plugin": "llama", "model_dir": "/m", "infer_params": {}, "extra": 1})
    assert ident == model_identity({"udf_name": "m", "plugin": "llama", "model_dir": "/m", "infer_params": {}})
    req = {"ins": "hi", "his": [], "temperature": 0.0, "kwargs": {}}
    k = ResultCache.key(ident, 3, req)
    assert k != ResultCache.key(ident, 4, req)  # another row
    assert k != ResultCache.key(ident, 3, {**req, "temperature": 0.5})  # another request
    other = model_identity({"udf_name": "m", "plugin": "llama", "model_dir": "/other", "infer_params": {}})
    assert k != ResultCache.key(other, 3, req)  # another model behind the same name
    assert store.put_many("m", [(k, {"output": "a"}), ("k2", {"error": "too long", "error_code": "x"})]) == 1
    assert store.get_many([k, "k2"]) == {k: {"output": "a"}}  # failed rows are not kept
    assert store.count() == {"m": 1} and store.clear("other") == 0 and store.clear("m") == 1
    store.close()


@pytest.mark.ray
@pytest.mark.timeout(400)
def test_an_interrupted_select_resumes_with_only_the_missing_rows(llm, tiny_models, workspace):
    llm.setup_num_workers(1)
    if not llm.is_model_exist("cache_chat"):
        llm.deploy(tiny_models["llama"], "llama", "cache_chat", {})
    try:
        questions = [f"question {i}: {'why ' * (i % 7)}" for i in range(ROWS)]
        (workspace / "data").mkdir(exist_ok=True)
        pq.write_table(pa.table({"id": list(range(ROWS)), "q": questions}), workspace / "data" / "cache_questions.parquet")
        store = llm.result_cache
        store.clear("cache_chat")

        # a driver that dies half-way: kill it once some chunks are in the cache
        env = {**os.environ, "BYZER_LIKE_HOME": str(workspace)}
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, SCRIPT.format(on="true", tokens=8)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 240
        while store.count("cache_chat").get("cache_chat", 0) < 40:
            assert proc.poll() is None, f"the driver ended early: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no answers reached the cache"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()
        done_before = store.count("cache_chat")["cache_chat"]
        assert done_before < ROWS, "the driver finished before it could be interrupted"

        # run again: only the missing rows are computed, and the table is whole and in order
        session = llm.session
        results = session.sql(SCRIPT.format(on="true", tokens=8))
        select = next(r for r in results if r.kind == "select")
        assert f"({done_before} model answers from the result cache, {ROWS - done_before} computed)" in select.message
        answered = pq.read_table(workspace / "out" / "cache_answers").to_pylist()
        assert [row["id"] for row in answered] == list(range(ROWS))
        outputs = [json.loads(row["r"]) for row in answered]
        assert [o["input"] for o in outputs] == questions and all(o["output"] for o in outputs)
        assert store.count("cache_chat")["cache_chat"] == ROWS

        # the answers equal a run without the cache (greedy)
        fresh = session.sql(SCRIPT.format(on="false", tokens=8))
        assert "result cache" not in next(r for r in fresh if r.kind == "select").message
        again = [json.loads(row["r"])["output"] for row in pq.read_table(workspace / "out" / "cache_answers").to_pylist()]
        assert again == [o["output"] for o in outputs]

        # all from the cache now; another request (more tokens) is computed again
        third = next(r for r in session.sql(SCRIPT.format(on="true", tokens=8)) if r.kind == "select")
        assert f"({ROWS} model answers from the result cache, 0 computed)" in third.message
        changed = next(r for r in session.sql(SCRIPT.format(on="true", tokens=9)) if r.kind == "select")
        assert "result cache" not in changed.message

        status = session.sql("!byzerllm cache status cache_chat;")[-1].table.to_pylist()
        assert status == [{"model": "cache_chat", "rows": 2 * ROWS}]
        cleared = session.sql("!byzerllm cache clear cache_chat;")[-1]
        assert cleared.table.to_pylist()[0]["removed"] == 2 * ROWS and store.count("cache_chat") == {}
        with pytest.raises(ConfigError, match="llm_cache"):
            session.sql('set llm_cache="maybe";')
    finally:
        llm.session.variables.pop("llm_cache", None)
        llm.undeploy("cache_chat")
