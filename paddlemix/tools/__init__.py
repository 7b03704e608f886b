"""Command-line tools: `python -m paddlemix.tools.convert`."""
