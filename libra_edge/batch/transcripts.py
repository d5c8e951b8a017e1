"""Chat transcripts as batch input: OpenAI `messages` and ShareGPT `conversations` records.

Each assistant turn with text is judged as a (question, response) pair with the nearest
user turn before it. A record that cannot be read as a conversation raises
`MalformedConversation` with a reason (the reader turns it into `file:line: reason`);
things that lose nothing the user asked for (an image part, a tool call without text)
come back as notes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

TranscriptFormat = Literal["messages", "conversations"]
InputFormat = Literal["auto", "pairs", "messages", "conversations"]
INPUT_FORMATS: tuple[str, ...] = ("auto", "pairs", "messages", "conversations")
TurnSelection = Literal["all", "last"]
TURN_SELECTIONS: tuple[str, ...] = ("all", "last")

# Roles each format knows, mapped to the four the judge cares about. OpenAI's
# `developer` is its newer name for `system`, `function` the older one for `tool`;
# ShareGPT exports (LLaMA-Factory, FastChat) use these speaker names; a `function_call`
# turn is the model calling a tool (JSON, not a reply to judge), so it counts as tool traffic.
_ROLES: dict[str, dict[str, str]] = {
    "messages": {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
                 "tool": "tool", "function": "tool"},
    "conversations": {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                      "assistant": "assistant", "function_call": "tool", "observation": "tool",
                      "tool": "tool"},
}
# The field holding each format's turns, and the keys of one turn.
TRANSCRIPT_KEYS: dict[str, str] = {"messages": "messages", "conversations": "conversations"}
_SPEAKER = {"messages": "role", "conversations": "from"}
_TEXT = {"messages": "content", "conversations": "value"}


class MalformedConversation(ValueError):
    """A record that is not a readable conversation; the message is the reason."""


@dataclass(frozen=True)
class Turn:
    """One assistant turn to judge and the user turn it answers."""

    index: int
    """Position of the assistant message in the conversation (0-based, system messages counted)."""
    question: str
    response: str


@dataclass
class Conversation:
    """The judgeable turns of one record, its other fields and what was noted while reading."""

    turns: list[Turn] = field(default_factory=list)
    other_fields: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    assistant_turns: int = 0
    """Assistant messages seen, with or without text."""


def detect_format(record: Any) -> TranscriptFormat | None:
    """The transcript format a record is written in, or None for a flat (question, response) record."""
    if isinstance(record, dict):
        for fmt, key in TRANSCRIPT_KEYS.items():
            if key in record:  # even when malformed: the record then says what is wrong with it
                return fmt  # type: ignore[return-value]
        return None
    if isinstance(record, list) and record and isinstance(record[0], dict):
        if "role" in record[0]:
            return "messages"
        if "from" in record[0]:
            return "conversations"
    return None


def read_conversation(record: Any, fmt: TranscriptFormat, *, turns: TurnSelection = "all") -> Conversation:
    """The turns to judge in one record (a dict with the format's list, or the bare list)."""
    key = TRANSCRIPT_KEYS[fmt]
    if isinstance(record, list):
        messages: Any = record
        others: dict[str, Any] = {}
    elif isinstance(record, dict):
        if key not in record:
            present = ", ".join(map(str, list(record)[:12])) or "none"
            raise MalformedConversation(f"missing field {key!r} (fields: {present})")
        messages = record[key]
        others = {k: v for k, v in record.items() if k != key}
    else:
        raise MalformedConversation(f"expected a JSON object with {key!r}, got {type(record).__name__}")
    if not isinstance(messages, list):
        raise MalformedConversation(f"field {key!r} is {_kind(messages)}, not a list of turns")
    if not messages:
        raise MalformedConversation(f"field {key!r} is empty")
    conv = Conversation(other_fields=others)
    question: str | None = None
    for index, message in enumerate(messages):
        role, text = _message(fmt, index, message, conv.notes)
        if role == "user":
            question = text
        elif role == "assistant":
            conv.assistant_turns += 1
            if not text.strip():
                why = "a tool call without text" if _has_tool_call(message) else "empty"
                conv.notes.append(f"turn {index}: assistant message is {why}; not judged")
            elif question is None:
                conv.notes.append(f"turn {index}: assistant message with no user message before it; not judged")
            else:
                conv.turns.append(Turn(index, question, text))
    if conv.assistant_turns == 0:
        raise MalformedConversation("no assistant turn to judge")
    if not conv.turns:
        raise MalformedConversation("no assistant turn with text after a user turn ("
                                    + "; ".join(conv.notes) + ")")
    if turns == "last":
        conv.turns = conv.turns[-1:]
    return conv


def _message(fmt: str, index: int, message: Any, notes: list[str]) -> tuple[str, str]:
    """(role, text) of one message, in the judge's role names."""
    if not isinstance(message, dict):
        raise MalformedConversation(f"turn {index}: expected an object, got {_kind(message)}")
    speaker_key, text_key = _SPEAKER[fmt], _TEXT[fmt]
    if speaker_key not in message:
        raise MalformedConversation(f"turn {index}: missing field {speaker_key!r}")
    speaker = message[speaker_key]
    roles = _ROLES[fmt]
    if not isinstance(speaker, str) or speaker.lower() not in roles:
        known = ", ".join(dict.fromkeys(roles))
        raise MalformedConversation(f"turn {index}: unknown {speaker_key} {speaker!r} (known: {known})")
    role = roles[speaker.lower()]
    content = message.get(text_key)
    if fmt == "conversations" or isinstance(content, str):
        if content is None and role in ("assistant", "tool"):
            return role, ""
        if not isinstance(content, str):
            raise MalformedConversation(f"turn {index}: field {text_key!r} is {_kind(content)}, not text")
        return role, content
    if content is None:
        if role == "user":
            raise MalformedConversation(f"turn {index}: user message has no {text_key!r}")
        return role, ""
    if isinstance(content, list):
        return role, _join_parts(index, content, notes)
    raise MalformedConversation(f"turn {index}: field {text_key!r} is {_kind(content)}, not text or a list of parts")


def _join_parts(index: int, parts: Sequence[Any], notes: list[str]) -> str:
    """The text parts of an OpenAI content list, joined by newlines; other parts noted."""
    texts: list[str] = []
    skipped: dict[str, int] = {}
    for number, part in enumerate(parts):
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict):
            kind = str(part.get("type", "?"))
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "refusal" and isinstance(part.get("refusal"), str):
                texts.append(part["refusal"])  # what the assistant said, so it is judged
            else:
                skipped[kind] = skipped.get(kind, 0) + 1
        else:
            raise MalformedConversation(f"turn {index}: content part {number} is {_kind(part)}, not an object")
    if skipped:
        what = ", ".join(f"{n} {kind}" for kind, n in skipped.items())
        notes.append(f"turn {index}: skipped non-text content ({what})")
    return "\n".join(texts)


def _has_tool_call(message: dict[str, Any]) -> bool:
    return bool(message.get("tool_calls") or message.get("function_call"))


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
