"""Building blocks shared by every model: attention, transformer layers, embeddings, pooling."""

from mmjax.layers.attention import IMPLEMENTATIONS, dot_product_attention
from mmjax.layers.embeddings import SequenceEmbed, masked_mean, sinusoidal_positions
from mmjax.layers.transformer import Encoder, EncoderLayer, MultiHeadAttention

__all__ = [
    "IMPLEMENTATIONS",
    "dot_product_attention",
    "SequenceEmbed",
    "masked_mean",
    "sinusoidal_positions",
    "Encoder",
    "EncoderLayer",
    "MultiHeadAttention",
]
