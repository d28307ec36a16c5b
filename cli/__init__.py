"""Command modules of the `dtwinseg` CLI, one per area. Each exposes ``register(app)``."""
