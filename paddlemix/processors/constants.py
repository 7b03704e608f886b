"""Numbers fixed by OpenAI CLIP that every CLIP-family preprocessor shares."""

# Per-channel RGB mean/std of CLIP's training images, from openai/CLIP clip/clip.py `_transform`.
OPENAI_DATASET_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD = (0.26862954, 0.26130258, 0.27577711)

# Token ids of CLIP's BPE vocabulary: 512 byte tokens + 48894 merges come first, then the two specials.
SOT_TOKEN_ID = 49406  # <start_of_text>
EOT_TOKEN_ID = 49407  # <end_of_text>
PAD_TOKEN_ID = 0  # padding after <end_of_text>; also the real token "!", so only position tells them apart
VOCAB_SIZE = 49408
DEFAULT_CONTEXT_LENGTH = 77  # text positions of every OpenAI CLIP model
