"""Image-caption datasets, the collator and the loader shared by every family's trainer."""
