"""parrotlet: serve LLM applications end to end."""

__version__ = "0.1.0"
