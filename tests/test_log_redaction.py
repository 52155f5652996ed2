"""Logs never carry PII by default: the `pii` field is dropped and every other text is redacted."""

from __future__ import annotations

import json
import logging

import pytest

from voiceai.telemetry import JsonFormatter, TextFormatter

pytestmark = pytest.mark.unit


def record(msg: str, *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("card 4111 1111 1111 1111 declined")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    rec = logging.LogRecord("voiceai.test", logging.WARNING, __file__, 1, msg, args, exc_info)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_redact_message_fields_and_exceptions() -> None:
    line = JsonFormatter(redact_pii=True).format(record(
        "caller %s asked", "0501234567", exc=True, pii={"transcript": "my email is a@b.ae"},
        error="IBAN AE070331234567890123456 rejected", note="رقمي ٠٥٠١٢٣٤٥٦٧", turn=3))
    out = json.loads(line)
    assert out["msg"] == "caller [PHONE] asked"
    assert out["pii"] == "[redacted]"
    assert out["error"] == "IBAN [IBAN] rejected" and out["note"] == "رقمي [PHONE]" and out["turn"] == 3
    assert "4111" not in out["exc"] and "[CARD]" in out["exc"]


def test_redaction_off_keeps_everything_for_local_debugging() -> None:
    out = json.loads(JsonFormatter(redact_pii=False).format(record("caller %s", "0501234567", pii="a@b.ae")))
    assert out["msg"] == "caller 0501234567" and out["pii"] == "a@b.ae"


def test_text_lines_redact_too() -> None:
    line = TextFormatter(redact_pii=True).format(record("lookup %s", "784-1990-1234567-1", pii="x", who="a@b.ae"))
    assert "784-1990" not in line and "a@b.ae" not in line and "[EMIRATES_ID]" in line
