"""OpenAI audio transcriptions and translations.

API reference: https://platform.openai.com/docs/api-reference/audio/json-object and
https://platform.openai.com/docs/api-reference/audio/transcript-text-done-event.

Two kinds of ``usage`` exist:

* ``{"type": "tokens", "input_tokens", "output_tokens", "total_tokens", "input_token_details"}``
  (gpt-4o-transcribe and later): ``input_tokens`` -> input (audio and text prompt together),
  ``output_tokens`` -> output, ``total_tokens`` -> provider_total. Streams state it on
  ``transcript.text.done``.
* ``{"type": "duration", "seconds": N}`` (whisper-1): billed per second, not per token. Nothing is
  booked as tokens; the extraction says ``NO_USAGE``.
"""

from __future__ import annotations

from tokenbook.usage.providers.base import JSONMap, Parser, as_int, as_map
from tokenbook.usage.scan import has_object_value
from tokenbook.usage.types import Extraction, Reason, ResponseContext, TokenUsage

__all__ = ["AudioTranscriptionsParser"]


class AudioTranscriptionsParser(Parser):
    ESTIMATES = False
    MODEL_KEY = None

    def __init__(self, ctx: ResponseContext) -> None:
        super().__init__(ctx)
        self._duration_billed = False

    def on_event(self, name: str, data: bytes) -> None:
        if b'"usage"' in data and has_object_value(data, b'"usage"'):
            obj = self.load(data)
            if obj is not None:
                self._take(as_map(obj.get("usage")))
        elif name == "error":
            self.error = True

    def on_document(self, doc: object) -> None:
        obj = as_map(doc)
        if obj.get("error"):
            self.error = True
            return
        self._take(as_map(obj.get("usage")))

    def _take(self, usage: JSONMap) -> None:
        if usage.get("type") == "duration":
            self._duration_billed = True
            return
        counts = TokenUsage(
            input=as_int(usage.get("input_tokens")), output=as_int(usage.get("output_tokens"))
        )
        if not counts.is_empty():
            self.set_final(counts, as_int(usage.get("total_tokens")))

    def extraction(
        self, *, end_of_stream: bool, failure: Reason | None = None, detail: str = ""
    ) -> Extraction:
        if self._duration_billed and self.final is None and not detail:
            detail = "usage is billed by audio duration, not tokens"
        return super().extraction(end_of_stream=end_of_stream, failure=failure, detail=detail)
