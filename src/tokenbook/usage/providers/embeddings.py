"""Embedding APIs: every token is an input token; the shape of the body says whose it is.

Field mapping (all to ``input``; embeddings generate no output tokens, so ``output`` stays
unknown even where a provider sends ``completion_tokens: 0``)::

    OpenAI, Azure, Mistral, Together, ...  usage.prompt_tokens (= usage.total_tokens)
        https://platform.openai.com/docs/api-reference/embeddings/object
    Voyage                                 usage.total_tokens
        https://docs.voyageai.com/reference/embeddings-api
    Gemini embedContent/batchEmbedContents usageMetadata.promptTokenCount (gemini-embedding-2;
                                           older models state nothing)
        https://ai.google.dev/api/embeddings
    Vertex AI :predict                     sum of predictions[].embeddings.statistics.token_count
        https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/text-embeddings-api
        (metadata.billableCharacterCount is characters, not tokens)
    Cohere /v1/embed, /v2/embed            meta.tokens.input_tokens, else
                                           meta.billed_units.input_tokens
        https://docs.cohere.com/reference/embed
    Bedrock Titan (InvokeModel)            inputTextTokenCount
    Bedrock (any model, InvokeModel)       x-amzn-bedrock-input-token-count response header
        (the only count for Cohere embed on Bedrock)
        https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-titan-embed-text.html
    Ollama /api/embed                      prompt_eval_count (legacy /api/embeddings: nothing)

``total_tokens`` / ``totalTokenCount`` become the provider total. A body with none of these
states no usage (``NO_USAGE``, nothing booked and nothing estimated).
"""

from __future__ import annotations

from collections.abc import Mapping

from tokenbook.usage.providers.base import JSONMap, Parser, as_int, as_map
from tokenbook.usage.types import TokenUsage

__all__ = ["EmbeddingsParser", "embedding_input_tokens"]


def _vertex_predictions(obj: JSONMap) -> int | None:
    predictions = obj.get("predictions")
    if not isinstance(predictions, list):
        return None
    counts = [
        as_int(as_map(as_map(as_map(p).get("embeddings")).get("statistics")).get("token_count"))
        for p in predictions
    ]
    known = [c for c in counts if c is not None]
    return sum(known) if known else None


def embedding_input_tokens(
    obj: JSONMap, headers: Mapping[str, str]
) -> tuple[int | None, int | None]:
    """(input tokens, stated total) of an embeddings response body and its headers."""
    usage = as_map(obj.get("usage"))
    if usage:
        total = as_int(usage.get("total_tokens"))
        prompt = as_int(usage.get("prompt_tokens"))
        if prompt is not None or total is not None:
            return (prompt if prompt is not None else total), total
    meta = as_map(obj.get("usageMetadata"))
    if meta:
        prompt = as_int(meta.get("promptTokenCount"))
        if prompt is not None:
            return prompt, as_int(meta.get("totalTokenCount"))
    vertex = _vertex_predictions(obj)
    if vertex is not None:
        return vertex, None
    cohere = as_map(obj.get("meta"))
    if cohere:
        tokens = as_map(cohere.get("tokens")) or as_map(cohere.get("billed_units"))
        count = as_int(tokens.get("input_tokens"))
        if count is not None:
            return count, None
    for key in ("inputTextTokenCount", "prompt_eval_count"):
        count = as_int(obj.get(key))
        if count is not None:
            return count, None
    header = headers.get("x-amzn-bedrock-input-token-count", "").strip()
    if header.isdigit():
        return int(header), None
    return None, None


class EmbeddingsParser(Parser):
    ESTIMATES = False
    MODEL_KEY = None

    def on_document(self, doc: object) -> None:
        obj = as_map(doc)
        if obj.get("error"):
            self.error = True
            return
        self.take_model(obj.get("model"))
        count, total = embedding_input_tokens(obj, self.ctx.response_headers)
        if count is not None:
            self.set_final(TokenUsage(input=count), total)

    def on_event(self, name: str, data: bytes) -> None:
        # Embeddings are never streamed; a framed body is read as one document per payload.
        obj = self.load(data)
        if obj is not None:
            self.on_document(obj)
