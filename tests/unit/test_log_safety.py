"""Errors are logged by class and place, never by message: messages quote the values that caused them."""

from __future__ import annotations

import logging

from application.logsafe import describe
from interfaces.logs import ValueFreeFormatter


def failing() -> None:
    try:
        int("secret-value-123")
    except ValueError as e:
        raise RuntimeError("wrapped secret-value-123") from e


def test_describe_names_the_class_chain_and_our_frames_only():
    try:
        failing()
    except RuntimeError as e:
        text = describe(e)
    assert text.startswith("RuntimeError from ValueError at ") and "secret" not in text


def test_library_tracebacks_are_formatted_without_messages():
    record = None
    try:
        failing()
    except RuntimeError:
        import sys

        record = logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application", (),
                                   sys.exc_info())
    text = ValueFreeFormatter("%(levelname)s %(name)s %(message)s").format(record)
    assert "Exception in ASGI application" in text and "failing" in text and "RuntimeError" in text
    assert "secret" not in text
