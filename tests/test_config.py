"""Option sets and requests: validated, typed, and errors that list the valid choices (no Ray, no torch)."""
import subprocess
import sys

import pytest

from byzer_like.config import DeployOptions, SetupConfig, chat_request, split_typed_key, typed_value
from byzer_like.errors import ConfigError, UnknownOptionError


@pytest.mark.parametrize(
    "values, field, expected",
    [
        ({"num_workers": "3"}, "num_workers", 3),
        ({"num_gpus": "2"}, "gpus_per_worker", 2.0),  # Byzer's name
        ({"num_cpus": 0.5}, "cpus_per_worker", 0.5),
        ({"cpus_per_worker": "1.5"}, "cpus_per_worker", 1.5),
        ({"max_queued_requests": "-1"}, "max_queued_requests", -1),
        ({"mode": "sft"}, "mode", "sft"),
    ],
)
def test_setup_values(values, field, expected):
    assert getattr(SetupConfig().with_values(values), field) == expected


def test_setup_keeps_earlier_values():
    s = SetupConfig().with_values({"num_workers": 2}).with_values({"gpus_per_worker": 1})
    assert (s.num_workers, s.gpus_per_worker) == (2, 1.0)
    assert s.sys_conf()["num_gpus"] == "1.0"


@pytest.mark.parametrize(
    "values, message",
    [
        ({"num_workers": 0}, "num_workers"),
        ({"num_workers": "two"}, "num_workers"),
        ({"mode": "train"}, "mode"),
        ({"cpus_per_worker": -1}, "cpus_per_worker"),
    ],
)
def test_setup_bad_values(values, message):
    with pytest.raises(ConfigError, match=message):
        SetupConfig().with_values(values)


def test_unknown_setup_key_lists_valid_ones():
    with pytest.raises(UnknownOptionError) as e:
        SetupConfig().with_values({"num_wokers": 2})
    assert "num_workers" in str(e.value) and "cpus_per_worker" in str(e.value)
    assert e.value.key == "num_wokers"


def test_deploy_options_accept_sql_and_python_spellings():
    a = DeployOptions.parse({"pretrainedModelType": "llama", "localModelDir": "/m", "udfName": "x", "reconnect": "true"},
                            where="deploy")
    b = DeployOptions.parse({"pretrained_model_type": "llama", "model_path": "/m", "udf_name": "x", "reconnect": True},
                            where="deploy")
    assert a == b and a.reconnect is True


@pytest.mark.parametrize(
    "values, error, text",
    [
        ({"pretrainedModelType": "llama", "udfName": "x", "colour": "red"}, UnknownOptionError, "udfName"),
        ({"pretrainedModelType": "llama", "udfName": "bad name"}, ConfigError, "udf_name"),
        ({"pretrainedModelType": "llama", "udfName": "x", "dtype": "float8"}, ConfigError, "dtype"),
        ({"pretrainedModelType": "llama", "udfName": "x", "load_in_4bit": "maybe"}, ConfigError, "boolean"),
        ({"udfName": "x"}, ConfigError, "pretrained_model_type"),
    ],
)
def test_deploy_options_errors(values, error, text):
    with pytest.raises(error, match=text):
        DeployOptions.parse(values, where="deploy")


@pytest.mark.parametrize(
    "key, value, name, expected",
    [
        ("sft.int.max_seq_length", "512", "sft.max_seq_length", 512),
        ("sft.float.lr", "0.5", "sft.lr", 0.5),
        ("sfft.bool.setup_nccl_socket_ifname_by_ip", "true", "sfft.setup_nccl_socket_ifname_by_ip", True),
        ("sft.list.target_modules", '["q_proj","v_proj"]', "sft.target_modules", ["q_proj", "v_proj"]),
        ("sft.dict.extra", '{"a": 1}', "sft.extra", {"a": 1}),
        ("sft.str.name", "x", "sft.name", "x"),
        ("temperature", "0.3", "temperature", "0.3"),
    ],
)
def test_typed_keys(key, value, name, expected):
    assert split_typed_key(key)[0] == name
    assert typed_value(key, value) == expected


@pytest.mark.parametrize("key, value", [("sft.int.x", "1.5"), ("sft.bool.x", "perhaps"), ("sft.list.x", '{"a":1}'),
                                        ("sft.dict.x", "not json")])
def test_typed_key_wrong_value(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        typed_value(key, value)


def test_chat_request_from_messages_and_config():
    r = chat_request(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
         {"role": "assistant", "content": "hello"}, {"role": "user", "content": "again"}],
        {"temperature": "0.3", "max_length": 64, "generation.image": "x.png", "gen.top_k": 5, "system_msg": "s",
         "max_tokens": 10},
    )
    assert r.ins == "again" and [m.role for m in r.his] == ["system", "user", "assistant"]
    assert r.temperature == 0.3 and r.max_length == 64 and r.max_new_tokens == 10
    assert r.kwargs == {"image": "x.png", "top_k": 5, "system_msg": "s"}


def test_chat_request_instruction_and_history():
    r = chat_request([], {"instruction": "q2", "history": '[{"role":"user","content":"q1"},{"role":"assistant","content":"a1"}]'})
    assert r.ins == "q2" and len(r.his) == 2


@pytest.mark.parametrize(
    "config, error",
    [
        ({"temprature": 0.1}, UnknownOptionError),
        ({"temperature": 5}, ConfigError),
        ({"top_p": 0}, ConfigError),
        ({"max_length": 0}, ConfigError),
    ],
)
def test_chat_request_errors(config, error):
    with pytest.raises(error):
        chat_request("hi", config)


def test_chat_request_needs_a_message():
    with pytest.raises(ConfigError, match="at least one message"):
        chat_request([], {})


def test_import_is_light():
    """`import byzer_like` and the config layer load neither ray nor torch."""
    code = "import sys, byzer_like, byzer_like.config, byzer_like.cli; print('ray' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
