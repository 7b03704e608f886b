"""Custom (fused) operators; populated by later work."""
