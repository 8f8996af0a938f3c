"""The HTTP API with FastAPI's TestClient: OpenAI's formats, limits, errors, auth, metrics."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from rnn2gpt.server import ServerSettings, create_app, model_name


@pytest.fixture(scope="module")
def app(checkpoints):
    app = create_app(
        [str(checkpoints["gpt"] / "best"), str(checkpoints["lstm"]), str(checkpoints["mt"])],
        settings=ServerSettings(max_batch=8, max_queue=16, max_tokens=200),
    )
    yield app
    for host in app.state.hosts.values():
        host.close()


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as client:
        yield client


def _complete(client, **body):
    response = client.post("/v1/completions", json={"model": "tiny-gpt", **body})
    assert response.status_code == 200, response.text
    return response.json()


def _sse(response) -> list:
    events = [
        line[len("data: ") :] for line in response.text.split("\n\n") if line.startswith("data: ")
    ]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_models_are_named_after_their_run_folders(client, checkpoints):
    assert model_name(checkpoints["gpt"] / "best") == model_name(checkpoints["gpt"]) == "tiny-gpt"
    data = client.get("/v1/models").json()
    assert data["object"] == "list"
    cards = {card["id"]: card for card in data["data"]}
    assert set(cards) == {"tiny-gpt", "tiny-lstm", "tiny-mt"}
    assert cards["tiny-gpt"]["context"] == 64 and cards["tiny-lstm"]["context"] is None
    assert cards["tiny-mt"]["task"] == "translation"
    assert client.get("/health").json()["status"] == "ok"


@pytest.mark.parametrize("model", ["tiny-gpt", "tiny-lstm"])
def test_a_completion_has_openais_shape_and_usage(client, model):
    body = _complete(client, model=model, prompt="ROMEO:", max_tokens=12, temperature=0.0)
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["model"] == model
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] in ("length", "stop")
    assert isinstance(choice["text"], str) and choice["logprobs"] is None
    usage = body["usage"]
    assert usage["prompt_tokens"] == 6 and 1 <= usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_greedy_is_reproducible_and_n_choices_differ_with_a_seed(client):
    one = _complete(client, prompt="JULIET:", max_tokens=10, temperature=0.0)
    two = _complete(client, prompt="JULIET:", max_tokens=10, temperature=0.0)
    assert one["choices"][0]["text"] == two["choices"][0]["text"]
    many = _complete(client, prompt=["ROMEO:", "JULIET:"], n=3, max_tokens=20, seed=7)
    assert [c["index"] for c in many["choices"]] == list(range(6))
    texts = [c["text"] for c in many["choices"]]
    assert len(set(texts[:3])) > 1  # seed + j per choice
    again = _complete(client, prompt=["ROMEO:", "JULIET:"], n=3, max_tokens=20, seed=7)
    assert [c["text"] for c in again["choices"]] == texts


def test_logprobs_echo_and_stop(client):
    body = _complete(client, prompt="ROMEO:", max_tokens=8, temperature=0.0, logprobs=3, echo=True)
    choice = body["choices"][0]
    assert choice["text"].startswith("ROMEO:")
    lp = choice["logprobs"]
    n = body["usage"]["completion_tokens"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) <= n
    assert all(len(alts) <= 3 for alts in lp["top_logprobs"])
    assert all(v <= 0 for v in lp["token_logprobs"])
    # Greedy picks the most likely token: its logprob is the best of the alternatives.
    assert all(
        v == pytest.approx(max(a.values()))
        for v, a in zip(lp["token_logprobs"], lp["top_logprobs"])
    )
    full = _complete(client, prompt="o", max_tokens=30, temperature=0.0)["choices"][0]["text"]
    stop = full[4:6]
    cut = _complete(client, prompt="o", max_tokens=30, temperature=0.0, stop=[stop])["choices"][0]
    assert cut["text"] == full[: full.index(stop)] and cut["finish_reason"] == "stop"


def test_streaming_chunks_usage_and_done(client):
    with client.stream(
        "POST",
        "/v1/completions",
        json={
            "model": "tiny-lstm",
            "prompt": "ROMEO:",
            "max_tokens": 10,
            "temperature": 0.0,
            "stream": True,
            "logprobs": 2,
            "stream_options": {"include_usage": True},
        },
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        response.read()
    chunks = _sse(response)
    *tokens, last_choice, usage = chunks
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 10
    assert last_choice["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in tokens)
    assert all(len(c["choices"][0]["logprobs"]["top_logprobs"][0]) == 2 for c in tokens)
    streamed = "".join(c["choices"][0]["text"] for c in chunks[:-1])
    plain = _complete(client, model="tiny-lstm", prompt="ROMEO:", max_tokens=10, temperature=0.0)
    assert streamed == plain["choices"][0]["text"]


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"prompt": "x", "temperature": 5}, 400, "temperature"),
        ({"prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
        ({"prompt": "x", "max_tokens": 201}, 400, None),  # over this server's --max-tokens
        ({"prompt": "x", "max_tokens": 100_000}, 400, "max_tokens"),  # over the schema's cap
        ({"prompt": "x", "n": 1000}, 400, "n"),
        ({"prompt": ["x"] * 5, "n": 2}, 400, None),  # more choices than slots
        ({"prompt": "x", "top_p": 0}, 400, "top_p"),
        ({"prompt": "x", "logit_bias": {"word": 1}}, 400, None),
        ({"prompt": "x", "logit_bias": {"99999": 1}}, 400, None),
        ({"prompt": "x", "stop": [""]}, 400, None),
        ({"prompt": "x" * 80, "max_tokens": 10}, 400, None),  # past the GPT's 64-token context
        ({"prompt": "ROMEO ☃"}, 400, None),  # a character the char vocabulary lacks
        ({"prompt": []}, 400, None),
        ({"prompt": "x", "model": "nope"}, 404, "model"),
        ({"prompt": "x", "model": "tiny-mt"}, 400, "model"),  # not a language model
    ],
)
def test_bad_requests_are_4xx_with_openais_error_body(client, body, status, param):
    body = {"model": "tiny-gpt", **body}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    if param:
        assert error["param"] == param


def test_bad_json_is_a_400(client):
    response = client.post(
        "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "error" in response.json()


def test_translate_summarize_tokenize_detokenize(client):
    body = client.post(
        "/v1/translate", json={"input": ["red cat runs", "blue dog"], "num_beams": 2}
    )
    assert body.status_code == 200, body.text
    result = body.json()
    assert result["object"] == "translation" and result["model"] == "tiny-mt"
    assert len(result["outputs"]) == 2 and all(isinstance(o, str) for o in result["outputs"])
    assert client.post("/v1/summarize", json={"input": "x"}).status_code == 400  # no summarizer
    ids = client.post("/tokenize", json={"model": "tiny-gpt", "prompt": "ROMEO"}).json()
    assert ids["count"] == 5 and ids["max_model_len"] == 64
    back = client.post("/detokenize", json={"model": "tiny-gpt", "tokens": ids["tokens"]}).json()
    assert back["prompt"] == "ROMEO"
    assert (
        client.post("/detokenize", json={"model": "tiny-gpt", "tokens": [10**6]}).status_code == 400
    )


def test_metrics_and_the_openapi_schema(client):
    _complete(client, prompt="ROMEO:", max_tokens=3, temperature=0.0)
    text = client.get("/metrics").text
    for name in (
        "rnn2gpt_requests_total",
        "rnn2gpt_prompt_tokens_total",
        "rnn2gpt_generation_tokens_total",
        "rnn2gpt_slots_busy",
        "rnn2gpt_queue_depth",
        "rnn2gpt_time_to_first_token_seconds_bucket",
        "rnn2gpt_time_per_output_token_seconds_bucket",
    ):
        assert name in text, name
    assert 'endpoint="/v1/completions",status="200"' in text
    schema = client.get("/openapi.json").json()
    assert {"/v1/completions", "/v1/translate", "/v1/summarize", "/tokenize"} <= set(
        schema["paths"]
    )
    request = schema["components"]["schemas"]["CompletionRequest"]["properties"]
    assert request["max_tokens"]["maximum"] == 4096
    assert "Seq2SeqRequest" in schema["components"]["schemas"]


def test_the_playground_is_served_and_self_contained(client):
    page = client.get("/")
    assert page.status_code == 200 and "rnn2gpt playground" in page.text
    for name in ("/", "/static/app.js", "/static/style.css"):
        text = client.get(name).text
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name


def test_an_api_key_guards_everything_but_health_and_the_page(checkpoints):
    app = create_app([str(checkpoints["lstm"])], api_key="s3cret")
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/").status_code == 200
        assert client.get("/static/app.js").status_code == 200
        for method, path in (("get", "/v1/models"), ("get", "/metrics"), ("get", "/openapi.json")):
            response = getattr(client, method)(path)
            assert (
                response.status_code == 401
                and response.json()["error"]["code"] == "invalid_api_key"
            )
        wrong = {"Authorization": "Bearer nope"}
        assert client.get("/v1/models", headers=wrong).status_code == 401
        right = {"Authorization": "Bearer s3cret"}
        assert client.get("/v1/models", headers=right).status_code == 200
        ok = client.post("/v1/completions", json={"prompt": "o", "max_tokens": 2}, headers=right)
        assert ok.status_code == 200


def test_cors_is_off_unless_asked(checkpoints):
    for origins, allowed in (((), None), (("http://localhost:3000",), "http://localhost:3000")):
        app = create_app([str(checkpoints["lstm"])], cors_origins=origins)
        with TestClient(app) as client:
            response = client.get("/health", headers={"Origin": "http://localhost:3000"})
            assert response.headers.get("access-control-allow-origin") == allowed


def test_two_models_with_one_name_fail_at_start_up(checkpoints):
    from rnn2gpt.cli import EXIT_USER_ERROR, main
    from rnn2gpt.errors import ConfigError

    with pytest.raises(ConfigError, match="two models would be called tiny-gpt"):
        create_app([str(checkpoints["gpt"]), str(checkpoints["gpt"] / "best")])
    with pytest.raises(ConfigError, match="one --name per checkpoint"):
        create_app([str(checkpoints["gpt"])], names=["a", "b"])
    app = create_app([str(checkpoints["gpt"]), str(checkpoints["gpt"])], names=["a", "b"])
    assert set(app.state.hosts) == {"a", "b"}
    for host in app.state.hosts.values():
        host.close()
    assert main(["serve", str(checkpoints["gpt"]), str(checkpoints["gpt"])]) == EXIT_USER_ERROR
