"""Separability probes: criteria that score how well a stage's features separate the classes."""
