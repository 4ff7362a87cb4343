"""Ollama's native API: ``/api/chat`` and ``/api/generate`` (``/v1/...`` is OpenAI-compatible).

API reference: https://github.com/ollama/ollama/blob/main/docs/api.md

Field mapping (the body, or the final ``{"done": true}`` line of an ``application/x-ndjson``
stream)::

    prompt_eval_count   -> input   (omitted when the prompt came from Ollama's KV cache: unknown)
    eval_count          -> output  (thinking, when enabled, is inside)
    model               -> model

Ollama states no cache, reasoning or total counts. A line ``{"error": "..."}`` (the stream
broke after it began) or an error body is an upstream error.
"""

from __future__ import annotations

from typing import ClassVar

from tokenbook.usage.providers.base import JSONMap, Parser, as_int, as_map
from tokenbook.usage.types import TokenUsage

__all__ = ["OllamaParser", "ollama_usage"]


def ollama_usage(obj: JSONMap) -> TokenUsage | None:
    """Counts from an Ollama response object (a body or the ``done`` line)."""
    usage = TokenUsage(
        input=as_int(obj.get("prompt_eval_count")), output=as_int(obj.get("eval_count"))
    )
    return None if usage.is_empty() else usage


class OllamaParser(Parser):
    TEXT_KEYS: ClassVar[tuple[bytes, ...]] = (b'"content"', b'"response"', b'"thinking"')
    DOC_TEXT_KEYS = TEXT_KEYS
    TOOL_MARKERS: ClassVar[tuple[bytes, ...]] = (b'"function"',)

    def on_event(self, name: str, data: bytes) -> None:
        self.scan_model(data)
        if b"eval_count" in data or b'"error"' in data:
            obj = self.load(data)
            if obj is not None:
                self._take(obj)
                # The `done` line is the stream's last (API reference: "the final response").
                self.terminal = obj.get("done") is True and self.final is not None
            return
        if self.final is None:
            self.count_text(data)

    def on_document(self, doc: object) -> None:
        obj = as_map(doc)
        self._take(obj)

    def _take(self, obj: JSONMap) -> None:
        self.take_model(obj.get("model"))
        if obj.get("error"):
            self.error = True
            return
        usage = ollama_usage(obj)
        if usage is not None and obj.get("done") is not False:
            self.set_final(usage)
