"""Model ids as providers report them -> the ids to try against genai-prices, best first.

The id as reported is always tried first: genai-prices' own matching already knows most forms
(dated snapshots such as ``gpt-4o-2024-08-06``, ``claude-sonnet-4-5-20250929``, Vertex's
``claude-sonnet-4-5@20250929``, Bedrock's ``us.anthropic.…-v1:0`` and ARNs ending in a model id)
and, for Bedrock, tells cross-region (``global.``) prices from in-region ones, so nothing is
stripped that it could have used. Only when that fails are normalised forms tried:

- URL-encoded ids (``%3A`` from a Bedrock path) are decoded;
- resource names are cut to the model: ``models/gemini-2.5-flash``,
  ``projects/p/locations/l/publishers/google/models/gemini-2.5-pro`` -> the part after the last
  ``models/``;
- Bedrock: an ARN is cut to the part after its last ``/`` (an application inference profile ARN
  ends in an opaque id and stays unpriced: give it an override); a cross-region prefix
  (``us.``, ``eu.``, ``apac.``, ``global.``, …) is dropped; and an id without Bedrock's version
  suffix (Bedrock Mantle reports ``openai.gpt-oss-120b`` for ``openai.gpt-oss-120b-1:0``) is
  tried with ``-1:0`` and ``-v1:0``.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

_BEDROCK_REGION = re.compile(r"^(?:us|us-gov|eu|apac|au|ca|jp|in|global)\.")
_BEDROCK_VERSIONED = re.compile(r":\d+$")


def generic_candidates(model: str) -> list[str]:
    """The reported id, then its URL-decoded and resource-name-stripped forms (deduplicated)."""
    out: list[str] = []
    current = model.strip()
    _push(out, current)
    if "%" in current:
        current = unquote(current)
        _push(out, current)
    if "models/" in current:
        current = current.rsplit("models/", 1)[1]
        _push(out, current)
    return out


def bedrock_candidates(model: str) -> list[str]:
    """`generic_candidates` plus the Bedrock forms described in the module docstring."""
    out = generic_candidates(model)
    current = out[-1] if out else ""
    if current.startswith("arn:") and "/" in current:
        current = current.rsplit("/", 1)[1]
        _push(out, current)
    stripped = _BEDROCK_REGION.sub("", current, count=1)
    _push(out, stripped)
    if stripped and not _BEDROCK_VERSIONED.search(stripped):
        _push(out, f"{stripped}-1:0")
        _push(out, f"{stripped}-v1:0")
    return out


def _push(out: list[str], candidate: str) -> None:
    if candidate and candidate not in out:
        out.append(candidate)
