"""The one loopback check (`cluster.is_loopback`), shared by the cluster connection and the HTTP API's
key rule: bare hosts, host:port, bracketed IPv6, and URLs. No Ray needed."""
import pytest

from byzer_like.api.server import is_loopback_host, resolve_key
from byzer_like.cluster import is_loopback

LOOPBACK = [
    "localhost", "LOCALHOST", "localhost:6379",
    "127.0.0.1", "127.0.0.1:6379", "127.1.2.3", "127.255.255.254:80",
    "::1", "[::1]", "[::1]:8000", "0:0:0:0:0:0:0:1",
    "ray://127.0.0.1:10001", "ray://localhost:10001", "ray://[::1]:10001",
    "http://127.0.0.1:8000", "http://localhost:8000/v1", "http://[::1]:8000/v1/models", "https://user@localhost:443/",
    " 127.0.0.1:6379 ",
]
NOT_LOOPBACK = [
    None, "", ":8000",
    "0.0.0.0", "0.0.0.0:8000", "::", "[::]:8000",
    "10.0.0.1", "10.0.0.1:6379", "ray://10.0.0.1:10001", "http://10.0.0.1:8000/v1",
    "example.com", "example.com:6379", "ray://example.com:10001", "http://example.com/v1",
    "localhost.example.com", "127.0.0.1.example.com", "[::2]:8000", "::2", "128.0.0.1",
]


@pytest.mark.parametrize("address", LOOPBACK)
def test_loopback(address):
    assert is_loopback(address)


@pytest.mark.parametrize("address", NOT_LOOPBACK)
def test_not_loopback(address):
    assert not is_loopback(address)


def test_both_ipv6_spellings_agree():
    assert is_loopback("::1") and is_loopback("[::1]") and is_loopback("[::1]:6379")


def test_api_server_uses_the_same_check():
    assert is_loopback_host is is_loopback
    for host in ("::1", "[::1]", "127.0.0.1", "localhost"):
        assert resolve_key(host, None, env={}) == (None, False), host
    for host in ("0.0.0.0", "10.0.0.1", "example.com", "::"):
        key, generated = resolve_key(host, None, env={})
        assert key and generated, host
