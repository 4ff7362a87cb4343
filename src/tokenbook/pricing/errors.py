"""Errors of the pricing package.

::

    ValueError
     └── PriceConfigError   bad override file or override section (raised at start-up only)

Pricing itself never raises for traffic: a usage that cannot be priced (unknown provider or
model, a local model, a rate the price entry lacks) is `None` from `Pricer.price`, which the
caller counts in ``tokenbook_price_missing_total`` and books without cost. A `PriceConfigError`
is a usage error of the operator: tokenbook refuses to start and prints its message, which names
the file and the field.
"""

from __future__ import annotations


class PriceConfigError(ValueError):
    """The price override file (or section) is invalid; the message names file and field."""
