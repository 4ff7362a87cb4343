"""tokenbook: attribute, count, price and watch every LLM token crossing an Envoy gateway."""

__version__ = "0.1.0"
