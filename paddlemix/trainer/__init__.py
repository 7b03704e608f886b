"""Training: the shared trainer, its arguments, and optimizer/schedule construction."""
