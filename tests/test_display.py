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
