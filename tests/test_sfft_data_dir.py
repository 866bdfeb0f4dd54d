"""sfft's `localDataDir` (Byzer's key): a folder of raw text files read as `load text.` reads it (one row per
line, column `value`) and trained on in place of inputTable; the path is checked against the allowed roots
and for text before any job starts. SQL over the fake runtime (no Ray), plus the reader itself."""
from __future__ import annotations

import pytest

from byzer_like.errors import ConfigError, DataFileError, UnknownOptionError, WorkspacePathError
from byzer_like.session.io import text_dir_table
from byzer_like.workspace import Workspace
from fake_runtime import FakeRuntime

pytestmark = pytest.mark.timeout(30)
SFFT = ('!byzerllm setup sfft; run command as LLM.`` where pretrainedModelType="sfft/llama" and localModelDir="m" '
        'and model="command" and outputTable="llama_cn" and `sfft.int.max_length`="32"')


@pytest.fixture
def rt(tmp_path) -> FakeRuntime:
    raw = tmp_path / "data" / "raw_data"
    (raw / "more").mkdir(parents=True)
    (raw / "a.txt").write_text("first line\nsecond line\n", encoding="utf-8")
    (raw / "more" / "b.text").write_text("third line\n", encoding="utf-8")
    (raw / "notes.md").write_text("not read: load text reads *.txt and *.text\n", encoding="utf-8")
    (tmp_path / "data" / "empty").mkdir()
    return FakeRuntime(str(tmp_path))


def test_local_data_dir_is_the_training_table_as_load_text_reads_it(s, rt):
    out = s.sql(f'{SFFT} and localDataDir="data/raw_data"; load text.`data/raw_data` as loaded;')
    (job,) = rt.trained
    assert job["task"] == "sfft" and job["options"].local_data_dir == "data/raw_data"
    assert job["table"].to_pylist() == s.table("loaded").to_pylist()
    assert job["table"].column("value").to_pylist() == ["first line", "second line", "third line"]
    assert job["params"]["localDataDir"] == "data/raw_data"  # the plugin's train_params keep Byzer's key
    assert out[1].message.startswith("job sfft-job-1")


@pytest.mark.parametrize("where, error, text", [
    ('localDataDir="/etc"', WorkspacePathError, "localDataDir"),
    ('localDataDir="data/nowhere"', DataFileError, "does not exist"),
    ('localDataDir="data/raw_data/a.txt"', DataFileError, "is a file, not a folder"),
    ('localDataDir="data/empty"', DataFileError, "holds no text files"),
    ('localDataDir="data/raw_data" and inputTable="t"', ConfigError, "not both"),
])
def test_a_bad_local_data_dir_fails_before_a_job_is_submitted(s, rt, where, error, text):
    s.sql("select 'x' as value as t;")
    with pytest.raises(error, match=text):
        s.sql(f"{SFFT} and {where};")
    assert rt.trained == []


def test_sft_names_local_data_dir_as_unknown_and_sfft_without_data_says_both_keys(s, rt):
    with pytest.raises(UnknownOptionError, match="localDataDir"):
        s.sql('run command as LLM.`` where pretrainedModelType="sft/llama" and localModelDir="m" '
              'and localDataDir="data/raw_data";')
    with pytest.raises(ConfigError, match='localDataDir="<folder of text files>"'):
        s.sql(f"{SFFT};")


def test_text_files_with_only_blank_lines_are_refused(tmp_path):
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "x.txt").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataFileError, match="hold no text"):
        text_dir_table(Workspace(tmp_path), "blank")
