"""Models: the ViT backbone, the projection head and the network that combines them."""

from bam_jax.models.heads import ProjectionHead
from bam_jax.models.network import BAMNetwork
from bam_jax.models.vit import VIT_VARIANTS, PatchEmbedding, ViT, posemb_sincos_2d

__all__ = ["BAMNetwork", "PatchEmbedding", "ProjectionHead", "VIT_VARIANTS", "ViT", "posemb_sincos_2d"]
