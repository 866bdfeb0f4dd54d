"""Load on the HTTP API: 200 concurrent requests, mixed streaming and whole answers, against a model
on 2 replicas. With room in the queue every request completes; with a small queue the excess is
refused at once with a 429 (back-pressure) while the rest complete; memory stays bounded."""
import asyncio
import time

import psutil
import pytest

from conftest import API_KEY

# heavy on a 2-core machine: runs with the fault tests (`python3 dev.py test -m faults`)
pytestmark = [pytest.mark.ray, pytest.mark.faults, pytest.mark.timeout(400)]
N = 200


async def _one(session, url, model, i, tokens):
    body = {"model": model, "messages": [{"role": "user", "content": f"request {i}"}], "max_tokens": tokens,
            "min_tokens": tokens, "temperature": 0, "stream": i % 2 == 0}
    start = time.monotonic()
    async with session.post(url, json=body) as r:
        if body["stream"] and r.status == 200:
            events = [line async for line in r.content if line.startswith(b"data:")]
            ok = events[-1].strip() == b"data: [DONE]" and not any(b'"error"' in e for e in events)
            return r.status, ok, time.monotonic() - start, r.headers.get("Retry-After")
        payload = await r.json()
        ok = r.status == 200 and bool(payload["choices"][0]["message"]["content"]) if r.status == 200 else payload
        return r.status, ok, time.monotonic() - start, r.headers.get("Retry-After")


async def _flood(base, model, tokens=12):
    import aiohttp

    headers = {"Authorization": f"Bearer {API_KEY}"}
    conn = aiohttp.TCPConnector(limit=N)
    async with aiohttp.ClientSession(headers=headers, connector=conn,
                                     timeout=aiohttp.ClientTimeout(total=300)) as session:
        return await asyncio.gather(*(_one(session, f"{base}/v1/chat/completions", model, i, tokens) for i in range(N)))


def _rss_mb(pids):
    return sum(psutil.Process(p).memory_info().rss for p in pids) / 2**20


def _pids(llm, api_server, model):
    from ray import serve

    from byzer_like.api.server import APP_NAME

    ingress = serve.get_app_handle(APP_NAME).address.remote().result(timeout_s=30)["pid"]
    replicas = set()
    for _ in range(40):  # ask until both replicas answered
        replicas.add(llm.get_meta(model, refresh=True)["replica_pid"])
        if len(replicas) == 2:
            break
    return [ingress, *replicas]


@pytest.fixture
def two_replicas(llm, tiny_models):
    deployed = []

    def deploy(name, **setup):
        client_setup = {"num_workers": 2, "cpus_per_worker": 0.5, **setup}
        saved = llm.setup_config
        for k, v in client_setup.items():
            llm.setup(k, v)
        try:
            llm.deploy(tiny_models["llama"], "llama", name, {})
        finally:
            for k in client_setup:
                llm.setup(k, getattr(saved, k))
        deployed.append(name)
        return name

    yield deploy
    for name in deployed:
        llm.undeploy(name)


def test_200_concurrent_requests_all_complete(api_server, llm, two_replicas):
    model = two_replicas("load_chat")
    pids = _pids(llm, api_server, model)
    asyncio.run(_flood(api_server.url, model))  # warm up: allocator pools, batch shapes
    before = _rss_mb(pids)
    for _ in range(2):
        outcomes = asyncio.run(_flood(api_server.url, model))
        assert [s for s, _, _, _ in outcomes] == [200] * N, [o for o in outcomes if o[0] != 200][:3]
        assert all(ok is True for _, ok, _, _ in outcomes)
    grown = _rss_mb(pids) - before
    assert grown < 150, f"the ingress and replicas grew by {grown:.0f} MB over {2 * N} more requests"
    served = {llm.get_meta(model, refresh=True)["replica"] for _ in range(20)}
    assert len(served) == 2


def test_a_full_queue_refuses_the_excess_at_once(api_server, llm, two_replicas):
    model = two_replicas("load_small_queue", max_ongoing_requests=2, max_queued_requests=4)
    # long answers: 4 in the replicas and 4 queued fill up long before 200 requests have arrived
    outcomes = asyncio.run(_flood(api_server.url, model, tokens=64))
    refused = [o for o in outcomes if o[0] == 429]
    done = [o for o in outcomes if o[0] == 200]
    assert len(refused) + len(done) == N, [o for o in outcomes if o[0] not in (200, 429)][:3]
    assert refused and done, (len(refused), len(done))
    assert all(ok is True for _, ok, _, _ in done)
    for _, payload, _, retry_after in refused:
        assert payload["error"]["code"] == "queue_full" and "max_queued_requests" in payload["error"]["message"]
        assert retry_after == "1"
    # refused without waiting for a model: each refusal came back before the slowest answer
    assert max(t for _, _, t, _ in refused) < max(t for _, _, t, _ in done)
    # and nothing is stuck afterwards
    after = asyncio.run(_flood(api_server.url, model))
    assert any(s == 200 for s, _, _, _ in after)
    assert llm.get_meta(model, refresh=True)["requests_in_flight"] == 0
