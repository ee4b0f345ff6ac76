"""Backbone plus projection head applied to multi-crop batches."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bam_jax.models.heads import ProjectionHead
from bam_jax.models.vit import ViT


class BAMNetwork(nn.Module):
    """ViT backbone and projection head over global and local crops.

    Param tree: {"backbone": ViT params, "head": ProjectionHead params}. With
    freeze_patch_embedding the frozen projection is params["backbone"]["patch_embedding"].

    Attributes:
      patch_size, width, depth, num_heads, mlp_ratio, freeze_patch_embedding, drop_path_rate:
        the ViT fields (see `ViT`); `VIT_VARIANTS[name]` gives width, depth and num_heads.
      head_hidden_dim, head_output_dim, head_layers: the `ProjectionHead` fields.
      dtype: compute dtype of backbone and head; params are float32 and outputs are upcast to
        float32 so that the objective runs in float32.
    """

    patch_size: int
    width: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    freeze_patch_embedding: bool = False
    drop_path_rate: float = 0.0
    head_hidden_dim: int = 4096
    head_output_dim: int = 4096
    head_layers: int = 3
    dtype: Any = jnp.float32

    def setup(self) -> None:
        self.backbone = ViT(
            patch_size=self.patch_size,
            width=self.width,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            freeze_patch_embedding=self.freeze_patch_embedding,
            drop_path_rate=self.drop_path_rate,
            dtype=self.dtype,
        )
        self.head = ProjectionHead(
            hidden_dim=self.head_hidden_dim,
            output_dim=self.head_output_dim,
            num_layers=self.head_layers,
            dtype=self.dtype,
        )

    def _encode_crops(self, crops: jax.Array, train: bool) -> jax.Array:
        """Run the backbone on crops [batch, V, H, W, C] -> crop-major features [V, batch, width].

        The crops are flattened image-major (a free reshape that keeps each device's images on
        that device when the batch axis is sharded), and only the small feature array is
        transposed to crop-major.
        """
        batch, num_crops = crops.shape[:2]
        flat = crops.reshape(batch * num_crops, *crops.shape[2:])
        features = self.backbone(flat, train=train)
        features = features.reshape(batch, num_crops, features.shape[-1])
        return features.transpose(1, 0, 2)

    def __call__(
        self, global_crops: jax.Array, local_crops: jax.Array | None = None, *, train: bool = False
    ) -> dict[str, jax.Array]:
        """Project all crops of a batch.

        Args:
          global_crops: [batch, G, H, W, C] float.
          local_crops: [batch, L, h, w, C] float, or None (or L = 0) for global crops only.
          train: enables stochastic depth in the backbone when its rate is above 0.

        Returns:
          "projections": float32 [G + L, batch, head_output_dim], crop-major: all images of
            crop 0, then crop 1, ...; global crops first.
          "features": float32 [G, batch, width], the backbone CLS features of the global crops.
        """
        for name, crops in (("global_crops", global_crops), ("local_crops", local_crops)):
            if crops is not None and crops.ndim != 5:
                raise ValueError(
                    f"{name} must be [batch, crops, height, width, channels], got shape "
                    f"{crops.shape}."
                )
        if local_crops is not None and local_crops.shape[0] != global_crops.shape[0]:
            raise ValueError(
                f"global_crops and local_crops disagree on the batch size: "
                f"{global_crops.shape[0]} != {local_crops.shape[0]}."
            )

        global_features = self._encode_crops(global_crops, train)
        features = [global_features]
        # One backbone pass per resolution, because the token count differs between them.
        if local_crops is not None and local_crops.shape[1] > 0:
            features.append(self._encode_crops(local_crops, train))
        all_features = jnp.concatenate(features, axis=0)

        # One head pass over all crops: [V, batch, width] -> [V, batch, D].
        projections = self.head(all_features)
        return {
            "projections": projections.astype(jnp.float32),
            "features": global_features.astype(jnp.float32),
        }

    def embed(self, images: jax.Array) -> jax.Array:
        """Compute backbone CLS features for evaluation: images [batch, H, W, C] -> [batch, width].

        Returns the compute dtype; call with `model.apply(variables, images, method="embed")`.
        """
        return self.backbone(images, train=False)
