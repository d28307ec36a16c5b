"""Perception: image -> Digital Twin (SAM proposals + refinement, VLM granularity and semantics, the builder)."""
