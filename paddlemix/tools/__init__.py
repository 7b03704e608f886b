"""Command-line tools: `python -m paddlemix.tools.convert` (checkpoints), `python -m paddlemix.tools.pack` (tar shards), `python -m paddlemix.tools.export` (Paddle Inference encoders)."""
