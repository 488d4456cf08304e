"""Building blocks shared by every model: attention, transformer layers, embeddings, pooling, input checks."""

from mmjax.layers.attention import IMPLEMENTATIONS, KernelUnavailableError, dot_product_attention
from mmjax.layers.embeddings import SequenceEmbed, masked_mean, sinusoidal_positions
from mmjax.layers.inputs import check_modalities
from mmjax.layers.transformer import Encoder, EncoderLayer, MultiHeadAttention

__all__ = [
    "IMPLEMENTATIONS",
    "KernelUnavailableError",
    "dot_product_attention",
    "check_modalities",
    "SequenceEmbed",
    "masked_mean",
    "sinusoidal_positions",
    "Encoder",
    "EncoderLayer",
    "MultiHeadAttention",
]
