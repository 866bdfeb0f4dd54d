"""A script is checked whole before its first statement runs, every statement's error says its line and column,
and a failing statement never hides the work before it (`byzer-like run`, the notebook and the client show or
carry each result as it finishes). Against the fake runtime (tests/fake_runtime.py): no Ray, no model.
"""
from __future__ import annotations

import argparse
import json

import pytest

from byzer_like.client import ByzerLLM
from byzer_like.errors import (ByzerError, ConfigError, DataFileError, EvalSetError, ModelNotFoundError,
                               NotSupportedError, UnknownOptionError, WorkspacePathError)
from byzer_like.session import Session
from fake_runtime import FakeRuntime

pytestmark = pytest.mark.timeout(60)

DEPLOY = ('run command as LLM.`` where action="infer" and pretrainedModelType="llama" and localModelDir="m" '
          'and udfName="echo"')
LOAD = "load json.`data/q.jsonl` as q"
ANSWER = 'select id, llm_result(echo(llm_param(map("instruction", q)))) as a from q as answers'


@pytest.fixture
def rt(tmp_path) -> FakeRuntime:
    (tmp_path / "data").mkdir()
    with open(tmp_path / "data" / "q.jsonl", "w") as f:
        for i in range(4):
            f.write(json.dumps({"id": i, "q": f"question {i}", "instruction": f"question {i}", "output": "yes"}) + "\n")
    return FakeRuntime(str(tmp_path))


def script(*statements: str) -> str:
    return "".join(f"{s};\n" for s in statements)


def failing(s: Session, text: str, kind: type = ByzerError) -> ByzerError:
    with pytest.raises(kind) as e:
        s.sql(text)
    return e.value


# -- 12. the whole script is checked before anything slow starts -------------------------------------
@pytest.mark.parametrize("last, kind, line_col, words", [
    # a typo in the last statement's options: the key, a listed name in the user's spelling
    ('run command as LLM.`` where action="infer" and pretrainedModelType="llama" and localModelDir="m" '
     'and udfname="two"', UnknownOptionError, (4, 102), ["did you mean 'udfName'?"]),
    ('run command as LLM.`` where pretrainedModelType="sft/llama" and inputTable="q" and localModelDir="m" '
     'and epoches="3"', UnknownOptionError, (4, 106), ["did you mean 'epochs'?", "numTrainEpochs (or epochs)"]),
    ('select llm_result(echo(llm_param(map("instruction", q, "temprature", 0.1)))) as b from q as t2',
     UnknownOptionError, (4, 57), ["unknown request option 'temprature'", "did you mean 'temperature'?"]),
    ("save overwrite answers as json.`/etc/answers`", WorkspacePathError, (4, 33), ["outside the allowed roots"]),
    ("load json.`data/missing.jsonl` as m2", DataFileError, (4, 12), ["missing.jsonl does not exist"]),
    ('!byzerllm setup "num_wokers=2"', UnknownOptionError, (4, 18), ["did you mean 'num_workers'?"]),
    ('run command as LLM.`` where action="eval" and udfName="echo" and inputTable="q" and metrics="blue"',
     ConfigError, (4, 1), ["did you mean 'bleu'"]),
    ('run answers as TableRepartition.`` where partitionNum="0" as parts', ConfigError, (4, 1), ["partitionNum"]),
])
def test_a_mistake_in_the_last_statement_stops_the_script_before_its_first(s, rt, last, kind, line_col, words):
    e = failing(s, script(DEPLOY, LOAD, ANSWER, last), kind)
    assert (e.line, e.column) == line_col, str(e)
    assert str(e).startswith(f"line {line_col[0]}, column {line_col[1]}: ")
    for w in words:
        assert w in str(e)
    assert rt.deployed == {} and rt.generated == [] and rt.trained == []  # nothing ran
    assert not s.has_table("q") and e.results == []


def test_all_option_errors_of_one_statement_are_said_together(s, rt):
    e = failing(s, script(LOAD, 'run command as LLM.`` where action="infer" and pretrainedModelType="llama" '
                                'and localModelDir="m" and udfname="x" and dtpye="float32" and device="gpu"'),
                UnknownOptionError)
    assert e.keys == ["udfname", "dtpye"] and e.line == 2
    message = e.message
    assert "did you mean 'udfName'?" in message and "unknown option 'dtpye' (did you mean 'dtype'?)" in message
    assert "deploy option 'device'" in message and "'gpu'" in message
    assert "udfName' is required" not in message  # the typo says it already
    assert message.count("valid options:") == 1


def test_did_you_mean_names_only_listed_options_in_the_users_spelling(s, rt):
    train = 'run command as LLM.`` where pretrainedModelType="sft/llama" and inputTable="q" and localModelDir="m"'
    for typo, meant in (("learningRat", "learningRate"), ("learning_rat", "learning_rate"),
                        ("epoches", "epochs"), ("batchsize", "batchSize")):
        e = failing(s, script(LOAD, f'{train} and {typo}="1"'), UnknownOptionError)
        assert f"did you mean '{meant}'?" in e.message, e.message
        listed = e.message.split("valid options: ")[1]
        assert meant.replace("_", "").lower() in listed.replace("_", "").lower()


def test_an_adapter_asked_of_a_deployment_that_cannot_serve_them_stops_the_script(s, rt):
    merged = DEPLOY + ' and adapterDir="adapters/qa"'
    e = failing(s, script(merged, LOAD, 'select echo@qa_model(llm_param(map("instruction", q))) as a from q as t'),
                NotSupportedError)
    assert (e.line, e.column) == (3, 13) and "cannot serve adapter 'qa_model'" in str(e)
    assert "merges the adapter" in str(e) and rt.deployed == {}
    e = failing(s, script(merged, LOAD, 'select echo(llm_param(map("instruction", q, "adapter", \'qa_two\'))) as a '
                                        "from q as t"), NotSupportedError)
    assert "qa_two" in str(e) and rt.deployed == {}
    # the same select on a deployment that serves adapters is no error
    s.sql(script(DEPLOY, LOAD, 'select echo@qa_model(llm_param(map("instruction", q))) as a from q as t'))
    assert rt.generated[0][1][0]["adapter"] == "qa_model"


def test_what_earlier_statements_make_is_known_to_the_check(s, rt):
    """A file an earlier save writes may be loaded; a setup mode set earlier makes a run train."""
    out = s.sql(script(LOAD, "save overwrite q as json.`out/q_copy`", "load json.`out/q_copy` as q2",
                       "!byzerllm setup sft",
                       'run command as LLM.`` where pretrainedModelType="llama" and inputTable="q2" '
                       'and localModelDir="m" and epochs="1"'))
    assert out[2].table.num_rows == 4 and rt.trained[0]["task"] == "sft"


def test_errors_found_while_running_say_the_statements_line_and_column(s, rt):
    e = failing(s, script(LOAD, "select * from q where id > 100 as empty",
                          'run command as LLM.`` where action="eval" and modelTable="nope@v1" and inputTable="q"'),
                ModelNotFoundError)
    assert (e.line, e.column) == (3, 1) and "no registered model 'nope@v1'" in str(e)
    assert [r.kind for r in e.results] == ["load", "select"]
    s.sql(DEPLOY + ";")
    e = failing(s, 'run command as LLM.`` where action="eval" and udfName="echo" and inputTable="empty";', EvalSetError)
    assert (e.line, e.column) == (1, 1) and str(e).startswith("line 1, column 1: ")


# -- 11. a failing statement never hides the work before it ------------------------------------------
def test_results_carry_their_seconds_and_rows_per_second(s, rt):
    load, deploy, answer = s.sql(script(LOAD, DEPLOY, ANSWER))
    assert all(r.seconds is not None and r.seconds >= 0 for r in (load, deploy, answer))
    assert load.model_rows == 0 and load.rows_per_s is None and "rows/s" not in load.timing()
    assert answer.model_rows == 4 and answer.timing().endswith(" rows/s")


def test_byzer_like_run_prints_each_result_as_it_finishes_then_the_error(rt, tmp_path, capsys, monkeypatch):
    from byzer_like.cli import scripts

    seen: list[str] = []  # what had been printed when the select's model was called
    generate = rt.generate

    def watching(*args, **kwargs):
        seen.append(capsys.readouterr().out)
        return generate(*args, **kwargs)

    monkeypatch.setattr(rt, "generate", watching)
    monkeypatch.setattr(scripts, "_session", lambda args, variables: Session(rt, variables=variables, progress=False))
    path = tmp_path / "s.sql"
    path.write_text(script(DEPLOY, LOAD, ANSWER, 'run command as LLM.`` where action="eval" and modelTable="gone" '
                                                 'and inputTable="q"'))
    with pytest.raises(ByzerError) as e:
        scripts.cmd_run(argparse.Namespace(script=str(path), set=None, max_rows=2))
    assert "-- [1] run: echo: deployed (" in seen[0] and "-- [2] load: q: 4 rows" in seen[0]
    assert "-- [3]" not in seen[0]  # the select had not finished yet
    out = capsys.readouterr().out
    assert "-- [3] select: answers: 4 rows (" in out and " rows/s)" in out and "echo:question 0" in out
    assert "... 2 more rows" in out
    assert str(e.value).startswith(f"{path}: line 4, column 1: no registered model 'gone'")


def test_the_clients_error_carries_the_tables_made_before_it(rt):
    llm = ByzerLLM(runtime=rt)
    with pytest.raises(ByzerError) as e:
        llm.sql(script(DEPLOY, LOAD, ANSWER, 'run command as LLM.`` where action="eval" and modelTable="gone" '
                                             'and inputTable="q"'))
    err = e.value
    assert [r.kind for r in err.results] == ["run", "load", "select"]
    assert set(err.tables) == {"q", "answers"} and err.tables["answers"].column("a").to_pylist()[0] == "echo:question 0"
    assert llm.session.table("answers").num_rows == 4  # the session keeps them
    assert err.line == 4


def test_a_notebook_cell_prints_each_statement_as_it_finishes(rt, capsys, monkeypatch):
    from byzer_like import notebook

    monkeypatch.setattr(notebook, "_session", Session(rt, progress=False))
    frame = notebook.ByzerMagics(shell=None).byzer("", script(DEPLOY, LOAD, ANSWER))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("run: echo: deployed (") and lines[1].startswith("load: q: 4 rows")
    assert lines[2].startswith("select: answers: 4 rows (") and lines[2].endswith(" rows/s)")
    assert list(frame["a"])[:1] == ["echo:question 0"]
    with pytest.raises(notebook.CellError) as e:
        notebook.ByzerMagics(shell=None).byzer("", script(LOAD, "select * from q as t",
                                                          'run command as LLM.`` where action="eval" '
                                                          'and modelTable="gone" and inputTable="t"'))
    lines = capsys.readouterr().out.splitlines()
    assert [x.split(":")[0] for x in lines] == ["load", "select"]
    assert "line 3, column 1" in e.value._render_traceback_()[0]
