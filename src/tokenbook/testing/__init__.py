"""Test helpers shipped with tokenbook (a fake provider) for its own tests, the demo and users."""
