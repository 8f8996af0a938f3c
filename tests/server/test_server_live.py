"""A live server on 127.0.0.1: the official openai client, batch invariance under load, the queue
bound, and a disconnecting client freeing its slot."""

from __future__ import annotations

import re
import threading
import time

import httpx
import pytest

from rnn2gpt.server import ServerSettings, create_app


def _busy_slots(url: str, model: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    match = re.search(rf'rnn2gpt_slots_busy{{model="{model}"}} ([0-9.e+-]+)', text)
    assert match, text
    return float(match.group(1))


def _wait(condition, seconds: float = 30.0) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_the_openai_client_works_unchanged(checkpoints, live):
    import openai

    server = live(create_app([str(checkpoints["gpt"]), str(checkpoints["lstm"])], api_key="k"))
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="k", max_retries=0)
    assert {m.id for m in client.models.list()} == {"tiny-gpt", "tiny-lstm"}
    done = client.completions.create(
        model="tiny-lstm", prompt="ROMEO:", max_tokens=12, temperature=0, logprobs=2, n=2, seed=3
    )
    assert len(done.choices) == 2 and done.usage.completion_tokens >= 2
    assert done.choices[0].logprobs.token_logprobs
    chunks = list(
        client.completions.create(
            model="tiny-lstm",
            prompt="ROMEO:",
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    plain = client.completions.create(
        model="tiny-lstm", prompt="ROMEO:", max_tokens=12, temperature=0
    )
    assert text == plain.choices[0].text
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()


@pytest.mark.parametrize("model", ["tiny-gpt", "tiny-lstm"])
def test_a_seeded_request_is_the_same_alone_and_among_31_others(checkpoints, live, model):
    server = live(create_app([str(checkpoints["gpt"]), str(checkpoints["lstm"])]))
    seeded = {
        "model": model,
        "prompt": "ROMEO:",
        "max_tokens": 40,
        "temperature": 1.0,
        "top_p": 0.95,
        "seed": 2024,
        "logprobs": 1,
    }

    def ask(body):
        response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]

    alone = ask(seeded)
    results: dict[int, dict] = {}

    def neighbour(i):
        results[i] = ask(
            {
                "model": model,
                "prompt": "JULIET:" * (1 + i % 3),
                "max_tokens": 5 + i,
                "temperature": 0.5 + (i % 5) / 5,
                "seed": i,
            }
        )

    threads = [threading.Thread(target=neighbour, args=(i,)) for i in range(31)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    batched = ask(seeded)
    for t in threads:
        t.join()
    assert len(results) == 31
    alone_tokens = alone["logprobs"]["tokens"]
    batched_tokens = batched["logprobs"]["tokens"]
    # Differences are allowed only where the two best candidates are within 1e-4 (a float tie).
    for position, (a, b) in enumerate(zip(alone_tokens, batched_tokens)):
        if a != b:
            alts = sorted(alone["logprobs"]["top_logprobs"][position].values(), reverse=True)
            assert len(alts) > 1 and alts[0] - alts[1] < 1e-4, (position, a, b)
            break
    else:
        assert batched["text"] == alone["text"]


def test_the_queue_bound_answers_429_with_retry_after(checkpoints, live):
    settings = ServerSettings(max_batch=1, max_queue=0, max_tokens=4096)
    server = live(create_app([str(checkpoints["lstm"])], settings=settings))
    long = {"prompt": "ROMEO:", "max_tokens": 4096, "temperature": 1.0, "stream": True}
    with (
        httpx.Client(timeout=60) as http,
        http.stream("POST", f"{server.url}/v1/completions", json=long) as running,
    ):
        lines = running.iter_lines()  # kept: a dropped iterator closes the stream
        next(lines)  # the slot is taken (for 4096 tokens: seconds)
        assert _busy_slots(server.url, "tiny-lstm") == 1
        refused = httpx.post(f"{server.url}/v1/completions", json={"prompt": "o", "max_tokens": 2})
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "rate_limit_error"


def test_a_client_that_disconnects_frees_its_slot(checkpoints, live):
    app = create_app([str(checkpoints["lstm"])], settings=ServerSettings(max_tokens=4096))
    server = live(app)
    body = {"prompt": "ROMEO:", "max_tokens": 4096, "temperature": 1.0, "stream": True}
    http = httpx.Client(timeout=60)
    with http.stream("POST", f"{server.url}/v1/completions", json=body) as running:
        lines = running.iter_lines()
        next(lines)
        assert _busy_slots(server.url, "tiny-lstm") == 1
    http.close()  # the client goes away mid-stream
    assert _wait(lambda: _busy_slots(server.url, "tiny-lstm") == 0, 10.0)
    # A non-streaming request whose client goes away is cancelled too, though its tokens never
    # pause (the server looks for its client every quarter second; before, it looked only in a
    # pause, and with the fast paths off the 4,096 tokens outlasted this wait).
    slow = {"prompt": "ROMEO:", "max_tokens": 4096, "temperature": 1.0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/completions", json=slow, timeout=0.5)
    assert _wait(lambda: _busy_slots(server.url, "tiny-lstm") == 0, 10.0)
