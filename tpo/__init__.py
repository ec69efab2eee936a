"""Temporal Preference Optimization (TPO) for video large multimodal models."""

__version__ = "0.1.0"
