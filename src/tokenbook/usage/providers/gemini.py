"""Gemini API and Vertex AI ``generateContent`` / ``streamGenerateContent``.

API reference: https://ai.google.dev/api/generate-content#UsageMetadata and
https://cloud.google.com/vertex-ai/generative-ai/docs/reference/rest/v1/GenerateContentResponse#UsageMetadata.

Field mapping (``usageMetadata``)::

    promptTokenCount            ⊇ cachedContentTokenCount
    cachedContentTokenCount     -> cached_input
    toolUsePromptTokenCount     outside promptTokenCount (url_context, search, code execution)
    prompt - cached + toolUse   -> input
    candidatesTokenCount        -> output     (excludes thoughts)
    thoughtsTokenCount          -> reasoning
    totalTokenCount             -> provider_total  (= prompt + candidates + thoughts + toolUse)

Fields are omitted rather than zero (no ``candidatesTokenCount`` after a SAFETY block or when
MAX_TOKENS hit during thinking), and stay unknown here. There is no cache-write count (explicit
caches are created and billed through the ``cachedContents`` API, not here).

Streams (SSE with ``alt=sse``, otherwise one JSON array whose elements arrive over time) repeat a
usage snapshot in every chunk; the **last** one is the statement — intermediate ones may even show
another ``promptTokenCount``. So the parser keeps only a reference to the last usage-bearing
payload and parses it once, at the end. A stream cut before the chunk with ``finishReason``
books that last snapshot plus an estimate of the text that followed it.
"""

from __future__ import annotations

from typing import ClassVar

from tokenbook.usage.providers.base import JSONMap, Parser, as_int, as_map, sub
from tokenbook.usage.types import Extraction, Reason, ResponseContext, TokenUsage

__all__ = ["GeminiParser", "gemini_usage"]


def gemini_usage(meta: JSONMap) -> tuple[TokenUsage, int | None]:
    """Disjoint counts and the stated total from a ``usageMetadata`` object."""
    prompt = as_int(meta.get("promptTokenCount"))
    cached = as_int(meta.get("cachedContentTokenCount"))
    tool_prompt = as_int(meta.get("toolUsePromptTokenCount"))
    if prompt is not None and cached is not None:
        cached = min(cached, prompt)
    uncached = sub(prompt, cached)
    input_tokens = tool_prompt if uncached is None else uncached + (tool_prompt or 0)
    return (
        TokenUsage(
            input=input_tokens,
            cached_input=cached,
            output=as_int(meta.get("candidatesTokenCount")),
            reasoning=as_int(meta.get("thoughtsTokenCount")),
        ),
        as_int(meta.get("totalTokenCount")),
    )


class GeminiParser(Parser):
    TEXT_KEYS: ClassVar[tuple[bytes, ...]] = (b'"text"',)
    DOC_TEXT_KEYS = TEXT_KEYS
    TOOL_MARKERS: ClassVar[tuple[bytes, ...]] = (b'"functionCall"',)
    MODEL_KEY = None  # modelVersion is read from the usage-bearing chunk

    def __init__(self, ctx: ResponseContext) -> None:
        super().__init__(ctx)
        self._last: bytes | None = None  # the last payload with usageMetadata, unparsed
        self._finished = False  # that payload also had a finishReason

    def on_event(self, name: str, data: bytes) -> None:
        if b'"usageMetadata"' in data:
            self._last = data
            self._finished = b'"finishReason"' in data
            if b'"candidatesTokenCount"' in data:
                self.reset_text()  # the snapshot counts the output so far, this chunk's included
                return
            # A snapshot without an output count (early chunks, thought-only chunks): its text
            # stays in the estimate.
        if b'"error"' in data:
            obj = self.load(data)
            if obj is not None and obj.get("error"):
                self.error = True
                return
        self.count_text(data)

    def on_document(self, doc: object) -> None:
        obj = as_map(doc)
        if obj.get("error"):
            self.error = True
            return
        self.take_model(obj.get("modelVersion"))
        meta = as_map(obj.get("usageMetadata"))
        if meta:
            self.set_final(*gemini_usage(meta))

    def extraction(
        self, *, end_of_stream: bool, failure: Reason | None = None, detail: str = ""
    ) -> Extraction:
        last, self._last = self._last, None
        if last is not None and self.final is None:
            obj = self.load(last)
            meta = as_map(obj.get("usageMetadata")) if obj is not None else {}
            if obj is not None:
                self.take_model(obj.get("modelVersion"))
            if meta:
                usage, total = gemini_usage(meta)
                if self._finished or (end_of_stream and failure is None):
                    self.set_final(usage, total)
                else:
                    # Not final: book the snapshot plus the text counted after it.
                    self.stated = usage
        return super().extraction(end_of_stream=end_of_stream, failure=failure, detail=detail)

    def retained_bytes(self) -> int:
        return len(self._last) if self._last is not None else 0
