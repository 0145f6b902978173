"""The bench's pure pieces for delivery: reading SSE bytes, pairing replies with their arrival on a
chat stream, the push figures, and the file-descriptor budget of the idle-streams job."""

import resource

import pytest

from switchboard.bench.idle_streams import FD_MARGIN, fd_budget
from switchboard.bench.push import histogram_summary, pair_pushes, push_summary
from switchboard.bench.sse import Event, SseParser


def test_events_split_anywhere_across_chunks_come_out_whole_and_once():
    body = (
        b": ping - 2026-12-02 18:00:00\r\n\r\n"
        b'id: 1\r\nevent: message\r\ndata: {"sender": "user"}\r\n\r\n'
        b"id: 2\r\nevent: operator_joined\r\ndata: {}\r\n\r\n"
    )
    for cut in range(1, len(body)):
        parser = SseParser()
        events = parser.feed(body[:cut]) + parser.feed(body[cut:])
        assert events == [
            Event("message", '{"sender": "user"}', "1"),
            Event("operator_joined", "{}", "2"),
        ], cut
        assert parser.comments == 1


def test_data_lines_join_with_newlines_and_an_unnamed_event_is_a_message():
    parser = SseParser()

    events = parser.feed(b"data: first\ndata:second\n\nevent: x\n\n")

    # No data line: the `x` event is not dispatched (as in browsers' EventSource).
    assert events == [Event("message", "first\nsecond", None)]


def test_a_carriage_return_alone_ends_a_line():
    parser = SseParser()

    assert parser.feed(b"event: gap\rdata: {}\r\r:ping\r") == [Event("gap", "{}", None)]
    # The last CR may be half of a CRLF: its line ends when the next chunk shows it is not.
    assert parser.comments == 0
    assert parser.feed(b"data: x\r\r\n") == [Event("message", "x", None)]
    assert parser.comments == 1


def test_a_multibyte_character_cut_between_chunks_is_not_a_line_end():
    parser = SseParser()
    body = "data: café\n\n".encode()
    cut = body.index("é".encode()) + 1  # inside the two bytes of é

    events = parser.feed(body[:cut]) + parser.feed(body[cut:])

    assert events == [Event("message", "café", None)]


def test_only_replies_accepted_in_the_window_with_their_stream_open_are_timed():
    opened = {"a": 100.0, "b": 105.0}
    sent = {
        "r1": ("a", 101.0),  # arrives 0.12 s later
        "r2": ("a", 102.0),  # never arrives: missing
        "r3": ("b", 104.0),  # before b's stream opened: would come as a replay
        "r4": ("a", 99.5),  # before the window
        "r5": ("a", 111.0),  # after the window
        "r6": ("c", 103.0),  # its stream never opened
        "r7": ("b", 106.0),  # read a moment before its own 202 was: 0, not negative
    }
    arrived = {"r1": 101.12, "r3": 105.01, "r4": 99.6, "r5": 111.1, "r7": 105.999}

    paired = pair_pushes(sent, arrived, opened, (100.0, 110.0))

    assert paired["latencies"] == pytest.approx([0.12, 0.0])
    assert paired["missing"] == 1
    assert paired["before_open"] == 2


def test_the_push_summary_gives_p95_next_to_the_usual_quantiles_in_milliseconds():
    latencies = [i / 1000 for i in range(1, 101)]  # 1..100 ms

    summary = push_summary({"latencies": latencies, "missing": 3, "before_open": 4})

    assert summary["count"] == 100
    assert (summary["p50"], summary["p95"], summary["p99"], summary["max"]) == (50.0, 95.0, 99.0, 100.0)
    assert summary["missing"] == 3 and summary["accepted_before_stream_open"] == 4


def test_the_service_histogram_counts_only_what_the_watch_added():
    before = {0.05: 10.0, 0.1: 10.0, 0.25: 10.0, float("inf"): 10.0}
    after = {0.05: 10.0, 0.1: 60.0, 0.25: 110.0, float("inf"): 110.0}  # 50 in (0.05, 0.1], 50 in (0.1, 0.25]

    summary = histogram_summary(before, after)

    assert summary["count"] == 100
    assert summary["p50"] == 100.0  # the top of the second bucket
    assert summary["p99"] == pytest.approx(247.0)  # linear inside (0.1, 0.25]


def test_the_descriptor_limit_is_raised_for_the_streams_up_to_the_hard_limit_only():
    assert fd_budget(5000, 20000, 20000) == (20000, None)  # enough already: unchanged
    assert fd_budget(5000, 1024, 20000) == (5000 + FD_MARGIN, None)
    assert fd_budget(5000, 1024, resource.RLIM_INFINITY) == (5000 + FD_MARGIN, None)
    soft, problem = fd_budget(5000, 1024, 4096)
    assert soft == 1024 and "ulimit -Hn" in problem
