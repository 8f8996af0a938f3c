"""Fuzzing the OpenAPI schema with schemathesis: no input gives a 5xx, and no call hangs.

Bounded: a fixed number of examples per operation, the schema's own caps (``max_tokens`` at most
4096, ``n`` at most 32, ...), a server that allows at most 16 new tokens (larger asks are a quick
400), and a deadline per call.
"""

from __future__ import annotations

import time

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from rnn2gpt.server import ServerSettings, create_app

DEADLINE_SECONDS = 10.0


@pytest.fixture(scope="module")
def fuzzed_app(checkpoints):
    app = create_app(
        [str(checkpoints["gpt"]), str(checkpoints["lstm"]), str(checkpoints["mt"])],
        settings=ServerSettings(max_batch=8, max_queue=8, max_tokens=16),
    )
    yield app
    for host in app.state.hosts.values():
        host.close()


@pytest.mark.slow
def test_no_input_gives_a_server_error_or_hangs(fuzzed_app):
    api = schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app)
    operations = [result.ok() for result in api.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/translate", "/tokenize"}
    statuses: dict[int, int] = {}
    for operation in operations:

        @settings(
            max_examples=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        @given(case=operation.as_strategy())
        def call(case):
            start = time.perf_counter()
            response = case.call()
            took = time.perf_counter() - start
            case.validate_response(response, checks=[not_a_server_error])
            assert response.status_code < 500, (case.path, response.text)
            assert took < DEADLINE_SECONDS, f"{case.method} {case.path} took {took:.1f} s"
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        call()
    assert sum(statuses.values()) >= 10 * len(operations)  # it did fuzz
    assert 200 in statuses and any(400 <= code < 500 for code in statuses)
