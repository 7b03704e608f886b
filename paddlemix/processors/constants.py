"""Numbers fixed by OpenAI CLIP's tokenizer (its image mean/std live with PreprocessConfig in
models.configuration, which processors import)."""

# Token ids of CLIP's BPE vocabulary: 512 byte tokens + 48894 merges come first, then the two specials.
SOT_TOKEN_ID = 49406  # <start_of_text>
EOT_TOKEN_ID = 49407  # <end_of_text>
PAD_TOKEN_ID = 0  # padding after <end_of_text>; also the real token "!", so only position tells them apart
VOCAB_SIZE = 49408
DEFAULT_CONTEXT_LENGTH = 77  # text positions of every OpenAI CLIP model
