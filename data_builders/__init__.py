"""data_builders package."""
