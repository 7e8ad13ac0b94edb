"""Models the book builds from its parts: the encoder-decoder Transformer (chapter 6), GPT (chapter 7)."""

from .transformer import AttentionMaps, Transformer, TransformerConfig
from .gpt import GPT, GPTConfig
