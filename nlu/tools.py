"""Tools: schema checks of the request's tools, and turning the model's output into checked calls.

Engines hand tool calls back in one of two shapes, and both end here in ``ToolCallResult``:

* ``openai``: the engine parses the calls itself (vLLM ``--tool-call-parser hermes``; llama.cpp for a
  named ``tool_choice``) and streams ``delta.tool_calls`` fragments: ``ToolCallAccumulator``.
* ``hermes``: the engine returns raw text and the model (Qwen2.5's template) writes
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` in it: ``HermesTextParser`` takes
  those blocks out of the streamed text so they are never spoken.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.validators import validator_for

from nlu.api import ToolCall, ToolCallResult, ToolSpec
from voiceai.serving import InvalidArgument

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"


def new_call_id() -> str:
    """An id for a call the engine did not name (hermes text carries no id)."""
    return f"call_{uuid.uuid4().hex[:16]}"


# ---- the request's tools ---------------------------------------------------------------------


def check_tools(tools: Iterable[ToolSpec], max_tools: int) -> None:
    """Raises ``InvalidArgument`` for a bad name, a duplicate or a schema that is not an object schema."""
    tools = list(tools)
    if len(tools) > max_tools:
        raise InvalidArgument("too_many_tools", f"{len(tools)} tools given; the limit is {max_tools}")
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        if not TOOL_NAME.match(tool.name):
            raise InvalidArgument(
                "bad_tool_name", f"tools[{i}].name {tool.name[:80]!r} must match [a-zA-Z0-9_-]{{1,64}}"
            )
        if tool.name in seen:
            raise InvalidArgument("duplicate_tool_name", f"tools[{i}].name {tool.name!r} is given twice")
        seen.add(tool.name)
        check_parameters_schema(tool.parameters, f"tools[{i}] ({tool.name})")


def check_parameters_schema(schema: Any, where: str) -> None:
    """A tool's parameters must be a valid JSON Schema describing an object."""
    if not isinstance(schema, dict):
        raise InvalidArgument("bad_tool_schema", f"{where}: the parameters schema must be a JSON object")
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as err:
        at = "/".join(str(p) for p in err.path) or "(root)"
        raise InvalidArgument(
            "bad_tool_schema", f"{where}: the parameters schema is not valid JSON Schema at {at}: {err.message}"
        ) from None
    if schema.get("type", "object") != "object":
        raise InvalidArgument(
            "bad_tool_schema", f"{where}: the parameters schema must have type 'object', not {schema['type']!r}"
        )


def parse_schema_text(text: str, where: str) -> dict:
    """Parses ``parameters_json_schema`` text; empty means a tool without parameters."""
    if not text.strip():
        return {"type": "object", "properties": {}}
    try:
        schema = json.loads(text)
    except ValueError as err:
        raise InvalidArgument("bad_tool_schema", f"{where}: parameters_json_schema is not JSON: {err}") from None
    if not isinstance(schema, dict):
        raise InvalidArgument("bad_tool_schema", f"{where}: parameters_json_schema must be a JSON object")
    return schema


# ---- the model's calls -----------------------------------------------------------------------


def validate_call(call: ToolCall, tools: Mapping[str, ToolSpec], allowed: bool = True) -> ToolCallResult:
    """Checks one call: tool exists, arguments are a JSON object that satisfies the tool's schema."""

    def bad(reason: str) -> ToolCallResult:
        return ToolCallResult(call=call, valid=False, validation_error=reason)

    if not allowed:
        return bad("the request's tool_choice is 'none'")
    tool = tools.get(call.name)
    if tool is None:
        offered = ", ".join(sorted(tools)) or "none"
        return bad(f"unknown tool {call.name[:80]!r}; the request offers: {offered}")
    try:
        arguments = json.loads(call.arguments_json or "{}")
    except ValueError as err:
        return bad(f"arguments are not valid JSON: {err}")
    if not isinstance(arguments, dict):
        return bad(f"arguments must be a JSON object, not {type(arguments).__name__}")
    validator = validator_for(tool.parameters)(tool.parameters)
    error = best_match(validator.iter_errors(arguments))
    if error is not None:
        return bad(f"arguments do not match the schema at {_json_path(error)}: {error.message}")
    return ToolCallResult(call=call, valid=True)


def _json_path(error: jsonschema.ValidationError) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)


def call_from_hermes_block(text: str) -> ToolCall:
    """Turns the JSON inside a ``<tool_call>`` block into a call; unparsable text keeps its raw form.

    A block that is not JSON becomes a call with an empty name and the raw text as arguments, so
    validation reports it instead of it being lost.
    """
    body = _strip_code_fence(text.strip())
    try:
        data = json.loads(body)
    except ValueError:
        return ToolCall(id=new_call_id(), name="", arguments_json=body)
    if not isinstance(data, dict):
        return ToolCall(id=new_call_id(), name="", arguments_json=body)
    name = data.get("name")
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):
        # Some models double-encode the arguments; accept the inner JSON when it parses.
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return ToolCall(id=new_call_id(), name=str(name or ""), arguments_json=arguments)
    return ToolCall(id=new_call_id(), name=str(name or ""),
                    arguments_json=json.dumps(arguments, ensure_ascii=False))


def _strip_code_fence(text: str) -> str:
    if text.startswith("```"):
        text = text[3:]
        text = text[text.find("\n") + 1:] if "\n" in text else ""
        if text.rstrip().endswith("```"):
            text = text.rstrip()[:-3]
    return text.strip()


def looks_like_bare_call(text: str) -> bool:
    """Small models often drop the tags and write only ``{"name": ..., "arguments": ...}``."""
    try:
        data = json.loads(_strip_code_fence(text.strip()))
    except ValueError:
        return False
    return isinstance(data, dict) and isinstance(data.get("name"), str) and (
        "arguments" in data or "parameters" in data
    )


@dataclass
class HermesTextParser:
    """Takes ``<tool_call>`` blocks out of streamed text, incrementally.

    ``feed`` returns the text that is safe to speak now and the raw blocks completed so far. Text that
    might be the start of a tag is held back until the next chunk decides. A message that starts with
    ``{`` or a code fence is held whole until ``finish``: if it is a bare call it becomes one, else
    it is released as text (a spoken reply never starts with a brace).
    """

    _pending: str = ""
    _in_block: bool = False
    _started: bool = False  # some non-space text was seen
    _bare: bool = False
    blocks_seen: int = 0

    def feed(self, chunk: str) -> tuple[str, list[str]]:
        self._pending += chunk
        if not self._started:
            head = self._pending.lstrip()
            if not head:
                return "", []
            self._started = True
            if head.startswith("{") or head.startswith("```"):
                self._bare = True
        if self._bare:
            return "", []
        return self._drain(final=False)

    def finish(self) -> tuple[str, list[str]]:
        """Releases what is held at the end of the stream; an unclosed block still counts as a call."""
        if self._bare:
            text, self._pending = self._pending, ""
            if looks_like_bare_call(text):
                self.blocks_seen += 1
                return "", [text]
            return text, []
        text, blocks = self._drain(final=True)
        if self._in_block and self._pending.strip():
            blocks.append(self._pending)
            self.blocks_seen += 1
        elif not self._in_block:
            text += self._pending
        self._pending, self._in_block = "", False
        return text, blocks

    def _drain(self, final: bool) -> tuple[str, list[str]]:
        out: list[str] = []
        blocks: list[str] = []
        while True:
            if self._in_block:
                end = self._pending.find(CLOSE_TAG)
                if end < 0:
                    break
                blocks.append(self._pending[:end])
                self.blocks_seen += 1
                self._pending = self._pending[end + len(CLOSE_TAG):]
                self._in_block = False
                continue
            start = self._pending.find(OPEN_TAG)
            if start >= 0:
                out.append(self._pending[:start])
                self._pending = self._pending[start + len(OPEN_TAG):]
                self._in_block = True
                continue
            keep = 0 if final else _partial_tag_length(self._pending)
            cut = len(self._pending) - keep
            out.append(self._pending[:cut])
            self._pending = self._pending[cut:]
            break
        return "".join(out), blocks


def _partial_tag_length(text: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of the open tag."""
    for n in range(min(len(OPEN_TAG) - 1, len(text)), 0, -1):
        if OPEN_TAG.startswith(text[-n:]):
            return n
    return 0


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class ToolCallAccumulator:
    """Joins OpenAI ``delta.tool_calls`` fragments by index into whole calls.

    The first fragment of a call carries its id and name, later ones only argument text (llama.cpp
    repeats id and name in every fragment, so they are set, never appended).
    """

    def __init__(self) -> None:
        self._calls: dict[int, _PartialCall] = {}
        self._done: set[int] = set()

    def add(self, index: int, call_id: str | None, name: str | None, arguments: str | None) -> list[ToolCall]:
        """Adds one fragment; returns calls that are complete because a later index started."""
        finished = [i for i in self._calls if i < index and i not in self._done]
        partial = self._calls.setdefault(index, _PartialCall())
        if call_id:
            partial.id = call_id
        if name:
            partial.name = name
        if arguments:
            partial.arguments.append(arguments)
        return [self._take(i) for i in sorted(finished)]

    def finish(self) -> list[ToolCall]:
        """Every call not yet returned."""
        return [self._take(i) for i in sorted(self._calls) if i not in self._done]

    def _take(self, index: int) -> ToolCall:
        self._done.add(index)
        p = self._calls[index]
        return ToolCall(id=p.id or new_call_id(), name=p.name, arguments_json="".join(p.arguments))
