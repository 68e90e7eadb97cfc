"""The load test of bench/load_test.py, small: `python app.py` over a tiny generator at
concurrency 1, 20 clients per phase on the REST and Gradio APIs, the rate-limit and queue probes."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.load_test import TINY, TRACE_MARKERS, LoadConfig, Report, rows, run

# Enough PGD iterations that one protection outlasts the burst of 20 requests, so the queue
# (2 waiting) overflows in every phase; few attempts and seconds keep the test near 30 s.
CONFIG = LoadConfig(clients=20, requests=2, seconds=4.0, model=TINY, iterations=20, queue=2, rate_limit=5)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    """One run for the module; the server gets the isolated caches and closed Hub of conftest."""
    root = Path(tmp_path_factory.mktemp("load"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DEEPSHIELD_CACHE_DIR", str(root / "cache"))
        env.setenv("HF_HOME", str(root / "hf"))
        env.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
        return run(CONFIG, root)


def test_every_check_of_the_load_test_passes(report):
    assert report.failures == []
    assert report.server_errors == []


def test_no_server_error_and_each_api_accepts_and_refuses_under_load(report):
    table = {(row["phase"], row["api"]): row for row in rows(report)}
    assert set(table) == {("rest", "rest"), ("gradio", "gradio"), ("mixed", "rest"), ("mixed", "gradio")}
    for row in table.values():
        assert row["5xx"] == 0 and row["other"] == 0 and row["requests"] > 0, row
    for row in (table["rest", "rest"], table["gradio", "gradio"]):
        assert row["200"] > 0 and row["503"] > 0, row  # the load exceeded one slot and a queue of 2
        assert row["ok p50"] is not None and row["refused max"] is not None
    # Mixed: both APIs share the engine's slot; REST, which reaches the engine first, may take every one.
    assert table["mixed", "rest"]["200"] + table["mixed", "gradio"]["200"] > 0


def test_rest_refusals_carry_a_message_and_retry_after(report):
    refusals = [a for phase in report.phases for a in phase.attempts if a.api == "rest" and a.status != 200]
    assert refusals
    for attempt in refusals:
        assert attempt.status in (429, 503) and attempt.clean
        assert attempt.message and attempt.retry_after is not None and attempt.retry_after > 0
    assert any("the server is busy" in a.message and "retry" in a.message for a in refusals)


def test_gradio_refusals_are_clean_errors(report):
    refusals = [a for phase in report.phases for a in phase.attempts if a.api == "gradio" and a.status != 200]
    assert refusals
    for attempt in refusals:
        assert attempt.status == 503 and attempt.message
        assert not any(marker in attempt.message for marker in TRACE_MARKERS)
    queue = report.gradio_queue
    assert queue["refused_503"] >= 1 and queue["other_statuses"] == []
    assert queue["completed"] == queue["accepted"] >= 1  # the admitted calls still finish
    assert "Queue is full" in queue["sample_refusal"]["detail"] and queue["sample_refusal"]["retry_after"] == "5"


def test_every_accepted_request_returns_a_valid_image(report):
    accepted = [a for phase in report.phases for a in phase.attempts if a.status == 200]
    assert accepted and all(a.valid_image for a in accepted)


def test_health_answers_during_and_after_the_load(report):
    for phase in report.phases:
        assert phase.health and all(status == 200 for status, _ in phase.health)
    assert report.health_after == 200


def test_the_rate_limit_holds_exactly(report):
    probe = report.rate_limit
    assert probe["holds"]
    assert probe["passed"] == CONFIG.rate_limit and probe["first_429_at"] == CONFIG.rate_limit + 1
    assert probe["other_client_status"] != 429  # per client: another address still gets through
    refusal = probe["sample_refusal"]
    assert f"at most {CONFIG.rate_limit} per minute" in refusal["message"] and 1 <= int(refusal["retry_after"]) <= 60
