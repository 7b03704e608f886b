from .generation import GenerationConfig, generate_tokens
from .loss import CoCaLoss
from .modeling import CoCa, decode_captions

__all__ = ["CoCa", "CoCaLoss", "GenerationConfig", "decode_captions", "generate_tokens"]
