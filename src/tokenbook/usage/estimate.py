"""Estimate of generated tokens from streamed text, for streams that never stated their usage.

Used only when a stream was cut, or ended, before the provider stated its final usage; the
result is booked as ``Source.ESTIMATED``, never mixed up with reported numbers. The parsers
count, from the payloads they already look at (`tokenbook.usage.scan`, no JSON parse): the
UTF-8 bytes of generated text (content, visible reasoning, tool-call arguments), the number of
payloads that carried text, and the number of tool calls started. Then::

    tokens = max(round(text_bytes / BYTES_PER_TOKEN), text_events)
             + PER_RESPONSE + PER_TOOL_CALL * tool_calls

* ``text_bytes / 4.4``: English-heavy text runs at ~4.4 UTF-8 bytes per token on the corpus.
* ``text_events`` is a floor: every non-empty delta is at least one token, and OpenAI-style
  providers (OpenAI, Together, Groq, DeepSeek, Mistral, Cohere, Ollama) send one token per
  delta, so short or digit-heavy outputs ("1, 2, 3") come out exact.
* ``PER_RESPONSE`` (1): the end-of-turn token every provider counts.
* ``PER_TOOL_CALL`` (10; parsers may set their own, Anthropic and Bedrock use 30): the call's
  name and framing, which are counted but not streamed as text. On the corpus an OpenAI tool call
  costs ~10 tokens beyond its arguments, a Claude or Nova call 30-60.

Measured on the corpus (``tests/unit/test_usage_estimate.py`` prints the table): each stream with
reported output is cut one byte before the provider's usage statement is complete, so the
adapter has seen all the text but no final usage, and its estimate is compared with the output
the provider then reported. Over the 32 such streams whose provider states no reasoning count
(Titan's single chunk, which holds text and usage together, has nothing before the cut): mean
absolute error 16.2 %, median 7.2 %, and the estimates total 9.5 % below the reported
total. The largest misses are tool calls (Nova: 130 estimated vs 202 reported; Anthropic
parallel tool use: 93 vs 113; web search server tools: 440 vs 637) and one-word answers, where
Claude counts a few framing tokens (2 vs 5).

Hidden reasoning cannot be estimated from text: OpenAI's reasoning models stream none of it
(``stream_reasoning_gpt5``: 17 estimated against 21 visible output tokens, while 448 hidden
reasoning tokens are never seen), so a cut reasoning stream is booked low. Where reasoning is
streamed as text (DeepSeek ``reasoning_content``, Groq/OpenRouter ``reasoning``) it is counted
into ``output``, because the estimate cannot tell which tokens a provider would call reasoning.
"""

from __future__ import annotations

__all__ = ["BYTES_PER_TOKEN", "PER_RESPONSE", "PER_TOOL_CALL", "estimate_output_tokens"]

BYTES_PER_TOKEN = 4.4
PER_RESPONSE = 1
PER_TOOL_CALL = 10


def estimate_output_tokens(
    text_bytes: int, text_events: int = 0, tool_calls: int = 0, per_tool_call: int = PER_TOOL_CALL
) -> int:
    """Estimated output tokens for the counted text; 0 when nothing was generated."""
    if text_bytes <= 0 and tool_calls <= 0:
        return 0
    from_text = max(round(text_bytes / BYTES_PER_TOKEN), text_events)
    return from_text + PER_RESPONSE + per_tool_call * tool_calls
