"""How tables are shown (byzer_like/display.py): text columns left-aligned and numbers right-aligned, cells cut
with "..." to the terminal's width, NULLs blank, line breaks shown as \\n. No Ray, no model."""
from __future__ import annotations

import pyarrow as pa
import pytest

from byzer_like.display import MIN_WIDTH, fit_widths, format_table, frame_text, terminal_width

ANSWER = "```python\ndef reverse(s):\n    return s[::-1]\n```\n\nThis function uses slicing. " * 3


def test_sql_results_left_align_text_and_fit_the_terminal():
    table = pa.table({"id": [1, 20, None], "task": ["reverses a string", "counts words", None],
                      "answer": [ANSWER, "b", None], "score": [0.5, 1.25, None]})
    lines = frame_text(table, width=70).split("\n")
    assert all(len(line) <= 70 for line in lines), lines
    header, first, second, empty = lines
    assert header.index("task") == first.index("reverses") == second.index("counts")  # text: left-aligned
    assert first.index("```python\\ndef") == header.index("answer") and "..." in first  # cut, breaks as \n
    assert first.rstrip().endswith("0.5") and second.rstrip().endswith("1.25")  # numbers: right-aligned
    assert first[:4] == " 1  " and second[:4] == "20  " and empty.strip() == ""  # NULLs blank, no <NA> / nan
    wide = frame_text(table).splitlines()  # no terminal: only the 80-character cap per cell
    assert max(len(line) for line in wide) > 70 and "..." in wide[1]


def test_lists_are_cut_to_the_width_and_never_below_the_minimum():
    rows = [("qa@v1", "adapter", "production", "/very/long/path/" * 8)]
    text = format_table(("model", "kind", "stage", "path"), rows, width=60).splitlines()
    assert all(len(line) <= 60 for line in text) and text[1].startswith("qa@v1  adapter  production  /very")
    assert text[1].endswith("...")
    assert fit_widths([30, 40], None) == [30, 40]
    assert fit_widths([30, 40], 20) == [MIN_WIDTH, MIN_WIDTH]  # too narrow a terminal: each keeps its minimum
    assert format_table(("a", "b"), [("x" * 50, "y")], aligned=False) == "a\tb\n" + "x" * 50 + "\ty"  # pipes: whole


@pytest.mark.parametrize("columns, width", [("100", 100), ("", None), ("0", None)])
def test_terminal_width_reads_columns_and_cuts_nothing_for_a_pipe(monkeypatch, columns, width):
    monkeypatch.setenv("COLUMNS", columns)
    assert terminal_width(open("/dev/null")) == width


RESULT = '{"output": "Paris, known for the Eiffel Tower.", "input": "capital?", "history": [], "metadata": {"input_tokens": 5}}'


@pytest.mark.parametrize("value, shown", [
    (RESULT, "Paris, known for the Eiffel Tower."),  # this project's form: the output
    ('{"output": null, "error": "ModelError: boom", "input": "q", "metadata": {}}', "error: ModelError: boom"),
    ('{"output": [0.25, -1.0], "input": "q", "metadata": {}}', "[0.25, -1.0]"),  # an embedding
    ('[{"predict": "yes", "metadata": {"t": 1}}, {"predict": "no", "metadata": {}}]', "yes\nno"),  # Byzer-LLM's
])
def test_a_model_calls_result_shows_as_its_answer(value, shown):
    from byzer_like.display import answer_text

    assert answer_text(value) == shown


@pytest.mark.parametrize("value", ['{"output": "x"}', '{"a": 1}', "[1, 2]", "[]", "{not json", "plain", "", None, 3])
def test_other_values_are_not_answers(value):
    from byzer_like.display import _NOT_AN_ANSWER, answer_text

    assert answer_text(value) is _NOT_AN_ANSWER


def test_a_column_of_results_shows_text_and_raw_shows_the_json_the_table_holds():
    """Only a column whose every value is a result is shown as text; NULLs stay blank; `raw` (set
    llm_show="json", --raw) shows the JSON; the table itself keeps the JSON."""
    table = pa.table({"q": ["capital?", "b"], "r": [RESULT, None], "mixed": [RESULT, '{"a": 1}']})
    header, first, second = frame_text(table).splitlines()
    assert first.split("  ")[:2] == ["capital?", "Paris, known for the Eiffel Tower."] and '"output"' in first
    assert second.split() == ["b", '{"a":', "1}"]  # the NULL result is blank, the mixed column's JSON stays JSON
    raw = frame_text(table, raw=True).splitlines()[1]
    assert raw.count('{"output": "Paris') == 2
    assert table.column("r")[0].as_py() == RESULT


def test_run_shows_answers_unless_asked_for_json(tmp_path, capsys, monkeypatch):
    """`byzer-like run`'s printing (cli/scripts.py) over a session whose model echoes: the answer's text;
    `set llm_show="json"` or --raw: the JSON; a value other than text / json is refused."""
    import argparse
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from fake_runtime import FakeRuntime

    from byzer_like.cli import scripts
    from byzer_like.errors import ConfigError
    from byzer_like.session import Session

    session = Session(FakeRuntime(str(tmp_path)), progress=False)
    session.sql('run command as LLM.`` where action="infer" and pretrainedModelType="llama" and localModelDir="m" '
                'and udfName="m";')
    select = 'select m(llm_param(map("instruction", "hello"))) as answer;'
    shown = []
    for script, raw in ((select, False), (select, True), ('set llm_show="json";' + select, False)):
        results = session.sql(script)
        capsys.readouterr()
        scripts._print_result(1, results[-1], 5, scripts._raw(argparse.Namespace(raw=raw), session))
        shown.append(capsys.readouterr().out.splitlines()[2])
    assert shown[0] == "echo:hello" and shown[1].startswith('{"output": "echo:hello"') and shown[2] == shown[1]
    with pytest.raises(ConfigError, match="llm_show must be one of text, json"):
        session.sql('set llm_show="yaml";')
    session.close()


class _Terminal:
    """A stream that says it is a terminal (and records what is written)."""

    def __init__(self):
        self.text = ""

    def isatty(self):
        return True

    def write(self, s):
        self.text += s

    def flush(self):
        pass


class _Pipe(_Terminal):
    def isatty(self):
        return False


def test_a_long_step_is_one_line_rewritten_on_a_terminal_and_one_line_into_a_pipe(monkeypatch):
    from byzer_like.display import ProgressLine

    monkeypatch.setenv("COLUMNS", "40")
    term, pipe = _Terminal(), _Pipe()
    for stream in (term, pipe):
        line = ProgressLine("importing smol.gguf", stream, interval_s=0)
        line.show("converting tensors 1/272")
        line.show("loading weights 272/272")
        line.done("done in 2.5 s")
    states = term.text.split("\r")[1:]
    assert term.text.count("\n") == 1 and term.text.endswith("\n") and len(states) == 3
    assert states[0] == "importing smol.gguf: converting tens..."  # cut to the terminal's width less one
    assert states[2].rstrip() == "importing smol.gguf: done in 2.5 s" and len(states[2]) == len(states[1]) + 1
    assert pipe.text == "importing smol.gguf: done in 2.5 s\n"  # only the last state
