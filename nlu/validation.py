"""Checks a generation request before anything reaches the engine.

Every refusal is an ``InvalidArgument`` with a short ``reason`` (a metric label) and a message
that names the offending field, so a caller can fix the request without reading server logs.
"""

from __future__ import annotations

import re

from nlu.api import GenerateParams
from nlu.config import NluConfig
from nlu.tools import check_tools
from voiceai.serving import InvalidArgument

ROLES = ("system", "user", "assistant", "tool")
TOOL_CHOICES = ("auto", "none", "required")
MAX_TOKENS_LIMIT = 4096
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 64
LANGUAGE_TAG = re.compile(r"^[a-zA-Z]{2,3}(-[a-zA-Z0-9]{1,8})*$")


def validate_params(params: GenerateParams, cfg: NluConfig) -> None:
    """Raises ``InvalidArgument`` for the first problem found in ``params``."""
    _check_messages(params, cfg)
    _check_tools_and_choice(params, cfg)
    _check_limits(params)
    if params.language and not LANGUAGE_TAG.match(params.language):
        raise InvalidArgument("bad_language", f"language {params.language[:20]!r} is not a language code "
                                              "such as 'ar' or 'en'")
    for i, passage in enumerate(params.context):
        if len(passage.text) > cfg.max_message_chars:
            raise InvalidArgument("passage_too_long", f"context[{i}].text has {len(passage.text)} characters; "
                                                      f"the limit is {cfg.max_message_chars}")


def _check_messages(params: GenerateParams, cfg: NluConfig) -> None:
    messages = params.messages
    if not messages:
        raise InvalidArgument("no_messages", "the conversation is empty: send at least one user message")
    if len(messages) > cfg.max_messages:
        raise InvalidArgument("too_many_messages", f"{len(messages)} messages given; the limit is "
                                                   f"{cfg.max_messages}")
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise InvalidArgument("unknown_role", f"messages[{i}].role {m.role!r} is not one of "
                                                  "system, user, assistant, tool")
        if len(m.content) > cfg.max_message_chars:
            raise InvalidArgument("message_too_long", f"messages[{i}].content has {len(m.content)} characters; "
                                                      f"the limit is {cfg.max_message_chars}")
        if m.role == "tool" and not m.tool_call_id:
            raise InvalidArgument("missing_tool_call_id", f"messages[{i}] has role tool but no tool_call_id")
        if m.tool_calls and m.role != "assistant":
            raise InvalidArgument("unexpected_tool_calls", f"messages[{i}] has tool_calls but role {m.role}; "
                                                           "only assistant messages carry tool calls")
        for j, call in enumerate(m.tool_calls):
            if not call.name:
                raise InvalidArgument("bad_tool_call", f"messages[{i}].tool_calls[{j}] has no name")
    if all(m.role == "system" for m in messages):
        raise InvalidArgument("no_messages", "the conversation has only system messages: add a user message")


def _check_tools_and_choice(params: GenerateParams, cfg: NluConfig) -> None:
    check_tools(params.tools, cfg.max_tools)
    if params.tool_choice not in TOOL_CHOICES:
        raise InvalidArgument("bad_tool_choice", f"tool_choice {params.tool_choice!r} is not one of "
                                                 "auto, none, required")
    if params.tool_choice == "required" and not params.tools:
        raise InvalidArgument("tool_choice_without_tools", "tool_choice is required but no tools are given")


def _check_limits(params: GenerateParams) -> None:
    if not 0 <= params.max_tokens <= MAX_TOKENS_LIMIT:
        raise InvalidArgument("bad_limits", f"max_tokens {params.max_tokens} is outside 0..{MAX_TOKENS_LIMIT}")
    if not 0.0 <= params.temperature <= 2.0:
        raise InvalidArgument("bad_limits", f"temperature {params.temperature} is outside 0..2")
    if not 0.0 <= params.top_p <= 1.0:
        raise InvalidArgument("bad_limits", f"top_p {params.top_p} is outside 0..1")
    if params.timeout_ms < 0:
        raise InvalidArgument("bad_limits", f"timeout_ms {params.timeout_ms} is negative")
    if len(params.stop) > MAX_STOP_SEQUENCES:
        raise InvalidArgument("bad_limits", f"{len(params.stop)} stop sequences given; the limit is "
                                            f"{MAX_STOP_SEQUENCES}")
    for i, stop in enumerate(params.stop):
        if not stop or len(stop) > MAX_STOP_CHARS:
            raise InvalidArgument("bad_limits", f"stop[{i}] must have 1..{MAX_STOP_CHARS} characters")
