"""SQL from the command line (script runner and REPL) and from a real Jupyter kernel."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).with_name("byzer-like"))


def run(args, ws, input=None, timeout=300):
    env = {**os.environ, "BYZER_LIKE_HOME": str(ws)}
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, input=input, timeout=timeout)


@pytest.fixture
def data_ws(tmp_path):
    shutil.copytree(ROOT / "sql" / "data", tmp_path / "data")
    return tmp_path


def test_run_prints_each_result(data_ws):
    out = run(["run", str(ROOT / "sql" / "tables.sql"), "--max-rows", "3"], data_ws)
    assert out.returncode == 0, out.stderr
    assert "-- [2] load: questions: 20 rows" in out.stdout and "... 17 more rows" in out.stdout
    assert "parquet_rows" in out.stdout and "-- [15] desc" in out.stdout


def test_run_fails_with_the_error_position(data_ws):
    script = data_ws / "bad.sql"
    script.write_text("load json.`data/questions.jsonl` as q;\n\nselect id,, task from q as t;\n")
    out = run(["run", str(script)], data_ws)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"error: {script}: line 3, column 11") and "^" in out.stderr


def test_run_set_fills_variables(data_ws):
    script = data_ws / "vars.sql"
    script.write_text("load json.`${dir}/questions.jsonl` as q;\nselect count(*) as n from q where id < ${n} as c;\n")
    out = run(["run", str(script), "--set", "dir=data", "--set", "n=5"], data_ws)
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip().endswith("5")
    missing = run(["run", str(script)], data_ws)
    assert missing.returncode == 1 and "${dir}" in missing.stderr and "--set" in missing.stderr


def test_repl_reads_multi_line_statements_and_survives_errors(data_ws):
    session = (
        "load json.`data/questions.jsonl`\n"
        "  as q;\n"
        "select nope from q as x;\n"
        "select 'a;b' as s,\n"
        "  count(*) as n from q as c;\n"
    )
    out = run(["sql"], data_ws, input=session, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "load: q: 20 rows" in out.stdout
    assert "error: line 1, column 8" in out.stderr and "nope" in out.stderr
    assert "a;b 20" in " ".join(out.stdout.split())
    assert (data_ws / ".sql_history").exists()


@pytest.mark.ray
@pytest.mark.timeout(400)
def test_notebook_cells_run_in_a_real_kernel(ray_cluster, workspace, tiny_models, tmp_path):
    """%load_ext byzer_like, then %%byzer cells: setup, deploy, load, select -> a DataFrame."""
    import nbformat
    from nbclient import NotebookClient

    shutil.copytree(ROOT / "sql" / "data", workspace / "data", dirs_exist_ok=True)
    cells = [
        "%load_ext byzer_like",
        '%%byzer\n!byzerllm setup single;\n!byzerllm setup "num_workers=1";\n!byzerllm setup "cpus_per_worker=0.5";',
        f'%%byzer\nrun command as LLM.`` where action="infer" and pretrainedModelType="llama"\n'
        f'  and localModelDir="{tiny_models["llama"]}" and udfName="nb_chat";',
        "%%byzer\nload json.`data/questions.jsonl` as questions;",
        '%%byzer\nselect id, llm_result(nb_chat(llm_param(map("instruction", task, "max_new_tokens", 4)))) as answer\n'
        "from questions where id < 3 order by id as answers;",
        "df = _\nprint(list(df.columns), len(df))",
        "%byzer !byzerllm model remove nb_chat;",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    nbformat.write(nb, tmp_path / "executed.ipynb")
    select_out = nb.cells[4].outputs
    html = [o for o in select_out if o.output_type == "execute_result"]
    assert html and "answer" in html[0]["data"]["text/plain"], select_out
    printed = "".join(o.get("text", "") for o in nb.cells[5].outputs)
    assert "['id', 'answer'] 3" in printed
    from byzer_like.serving import manager

    assert "nb_chat" not in manager.list_deployments()
