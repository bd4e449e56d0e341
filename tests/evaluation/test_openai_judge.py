"""The OpenAI-compatible judge against a local server: both orders, retries on 429, 500 and
timeouts, a client error that is not retried, the on-disk cache, and the rate limit."""

import pytest

from judge_server import JudgeServer
from preftune.evaluation.openai_judge import (ChatClient, JudgeError, OpenAIJudge, RateLimiter,
                                              parse_verdict)

PROMPT = [{"role": "user", "content": "What is 7 times 8?"}]


@pytest.fixture
def server():
    with JudgeServer() as running:
        yield running


def make_judge(url, tmp_path=None, sleeps=None, **options):
    client = ChatClient(url, "test-key", timeout=options.pop("timeout", 5.0),
                        max_retries=options.pop("max_retries", 3), backoff=0.01,
                        limiter=RateLimiter(options.pop("rpm", None)),
                        sleep=(sleeps.append if sleeps is not None else lambda s: None))
    cache = tmp_path / "verdicts.jsonl" if tmp_path else None
    return OpenAIJudge("judge-model", client=client, cache_path=cache, **options)


def test_parse_verdict_takes_the_last():
    assert parse_verdict("maybe [[A]]... on reflection [[B]]") == "B"
    assert parse_verdict("no verdict") is None


def test_both_orders_are_asked(server):
    judge = make_judge(server.url)
    assert judge.preference(PROMPT, "GOOD: 56", "54") == 1.0
    assert judge.preference(PROMPT, "54", "GOOD: 56") == 0.0
    assert judge.preference(PROMPT, "54", "55") == 0.5
    assert server.answer_orders()[:2] == [("GOOD: 56", "54"), ("54", "GOOD: 56")]
    assert server.requests[0][1]["model"] == "judge-model"


def test_position_bias_cancels_to_a_tie():
    with JudgeServer(position_biased=True) as biased:
        assert make_judge(biased.url).preference(PROMPT, "56", "54") == 0.5


def test_429_then_success_is_retried(server):
    sleeps = []
    judge = make_judge(server.url, sleeps=sleeps)
    server.script = [429]
    assert judge.preference(PROMPT, "GOOD", "bad") == 1.0
    assert len(server.requests) == 3 and judge.client.requests_sent == 3
    assert sleeps == [0.01]  # backoff x 2^0; the server's Retry-After 0 is shorter


def test_500_and_timeout_are_retried_until_the_limit(server):
    sleeps = []
    judge = make_judge(server.url, sleeps=sleeps, max_retries=2, timeout=0.2)
    server.script = [500, "slow"]
    assert judge.preference(PROMPT, "GOOD", "bad") == 1.0
    assert sleeps == [0.01, 0.02]  # exponential backoff
    server.script = [500, 503, 502]
    with pytest.raises(JudgeError, match="HTTP 502 after 3 attempts"):
        judge.preference(PROMPT, "x", "y")


def test_client_error_is_not_retried(server):
    judge = make_judge(server.url)
    server.script = [400]
    with pytest.raises(JudgeError, match="HTTP 400"):
        judge.preference(PROMPT, "x", "y")
    assert len(server.requests) == 1


def test_cache_makes_a_rerun_send_nothing(server, tmp_path):
    answers = [("GOOD one", "two"), ("three", "GOOD four"), ("five", "six")]
    first = [make_judge(server.url, tmp_path).preference(PROMPT, a, b) for a, b in answers]
    assert len(server.requests) == 6
    rerun = make_judge(server.url, tmp_path)
    assert [rerun.preference(PROMPT, a, b) for a, b in answers] == first == [1.0, 0.0, 0.5]
    assert len(server.requests) == 6 and rerun.client.requests_sent == 0
    # Another judge model is another cache entry.
    other = make_judge(server.url, tmp_path)
    other.model = "another-model"
    other.preference(PROMPT, *answers[0])
    assert len(server.requests) == 8


def test_rate_limiter_spacing_by_hand():
    """120 per minute: starts 0.5 s apart; a clock stuck at 0 must wait 0.5 then 1.0."""
    sleeps = []
    limiter = RateLimiter(120, clock=lambda: 0.0, sleep=sleeps.append)
    for _ in range(3):
        limiter.wait()
    assert sleeps == [0.5, 1.0]


def test_rate_limit_against_the_server(server):
    """Starts measured where the client sends (arrival times at the server also carry the
    scheduler's delays of a busy machine, which can bunch two arrivals together)."""
    clock = __import__("time").monotonic
    judge = make_judge(server.url, rpm=600)  # one request per 0.1 s
    limiter = judge.client.limiter
    limiter.sleep, starts, wait = __import__("time").sleep, [], limiter.wait

    def timed_wait():  # (the start the limiter set, the clock when it let the request go)
        wait()
        starts.append((limiter.next_start - limiter.interval, clock()))

    limiter.wait = timed_wait
    judge.preference(PROMPT, "GOOD", "bad")
    judge.preference(PROMPT, "other", "GOOD other")
    assert len(server.requests) == len(starts) == 4
    assert all(b[0] - a[0] >= 0.1 - 1e-9 for a, b in zip(starts, starts[1:]))
    assert all(released >= start for start, released in starts)  # it really slept
