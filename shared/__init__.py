"""Agent Fleet Manager's core: the pure domain (``shared.domain``) and thin adapters at its edge."""
