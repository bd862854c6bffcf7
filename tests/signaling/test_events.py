from __future__ import annotations

import json

import pytest

from signaling.events import (
    ClientEventError,
    ErrorEvent,
    InputTextAppend,
    MetricsLatency,
    SessionCreated,
    parse_client_event,
)

LIMIT = 4096


def test_input_text_append_parses_and_ignores_extra_fields() -> None:
    ev = parse_client_event(json.dumps({"type": "input_text.append", "text": "héllo", "event_id": "e1"}), LIMIT)
    assert isinstance(ev, InputTextAppend) and ev.text == "héllo"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b'{"type": "input_text.append", "text": "x"}', "unsupported_binary"),
        ("{nope", "malformed_json"),
        ("", "malformed_json"),
        ("[" * 3000 + "]" * 3000, "event_too_large"),
        ("[" * 4000, "malformed_json"),  # under the size limit but nested past the recursion limit
        ("[1, 2]", "invalid_event"),
        ('{"text": "no type"}', "invalid_event"),
        ('{"type": 7}', "invalid_event"),
        ('{"type": "response.create"}', "unknown_event_type"),
        ('{"type": "input_text.append"}', "invalid_event"),
        ('{"type": "input_text.append", "text": 5}', "invalid_event"),
        ('{"type": "input_text.append", "text": null}', "invalid_event"),
    ],
)
def test_bad_events_raise_client_event_error_with_a_code(data: str | bytes, code: str) -> None:
    with pytest.raises(ClientEventError) as e:
        parse_client_event(data, LIMIT)
    assert e.value.code == code and e.value.message


def test_size_limit_counts_utf8_bytes() -> None:
    text = "é" * 1500  # 1500 chars, 3000 bytes in UTF-8 (+ the JSON around it)
    ok = json.dumps({"type": "input_text.append", "text": text}, ensure_ascii=False)
    assert parse_client_event(ok, LIMIT).text == text
    with pytest.raises(ClientEventError) as e:
        parse_client_event(ok, 3000)
    assert e.value.code == "event_too_large" and "3000" in e.value.message


def test_server_events_have_the_contract_shape() -> None:
    assert json.loads(SessionCreated(call_id="c", model="tiny", trained=False).to_json()) == {
        "type": "session.created",
        "call_id": "c",
        "model": "tiny",
        "trained": False,
    }
    assert json.loads(MetricsLatency(turn=3, server_ms=41.5, step_ms=20.0, playout_ms=60.0).to_json()) == {
        "type": "metrics.latency",
        "turn": 3,
        "server_ms": 41.5,
        "step_ms": 20.0,
        "playout_ms": 60.0,
    }
    assert json.loads(ErrorEvent(code="x", message="y").to_json()) == {"type": "error", "code": "x", "message": "y"}
