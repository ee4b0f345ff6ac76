"""Vision Transformer backbone with a fixed 2D sin-cos position embedding.

The position embedding is computed from the input's own patch grid on every call, so one set of
parameters serves global and local crops of different resolutions. The representation is the CLS
token after the final LayerNorm.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Sizes of the ViT family: hidden width, number of blocks and attention heads (MLP ratio 4).
# "mu" is sized for CPU demos: 795,648 params, and 49 patches at 28 px with patch 4.
VIT_VARIANTS: dict[str, dict[str, int]] = {
    "mu": {"width": 128, "depth": 4, "num_heads": 4},
    "tiny": {"width": 192, "depth": 12, "num_heads": 3},
    "small": {"width": 384, "depth": 12, "num_heads": 6},
    "base": {"width": 768, "depth": 12, "num_heads": 12},
}

# Xavier (Glorot) uniform for every weight matrix and zero biases.
DENSE_INIT = nn.initializers.xavier_uniform()


def posemb_sincos_2d(
    grid_height: int, grid_width: int, width: int, *, temperature: float = 10_000.0
) -> np.ndarray:
    """Compute the fixed 2D sin-cos position embedding of a patch grid.

    A quarter of the channels each hold sin(x * w), cos(x * w), sin(y * w), cos(y * w), with the
    frequencies w = temperature ** -(i / (width / 4)) for i in [0, width / 4), x the column and y
    the row index of a patch.

    Args:
      grid_height: number of patch rows.
      grid_width: number of patch columns.
      width: embedding width; must be divisible by 4.
      temperature: base of the frequency scale.

    Returns:
      float32 [grid_height * grid_width, width], patches in row-major order.
    """
    if width % 4 != 0:
        raise ValueError(
            f"The sin-cos position embedding needs a width divisible by 4, got width={width}; "
            "choose a ViT width that is a multiple of 4."
        )
    quarter = width // 4
    omega = 1.0 / temperature ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.meshgrid(np.arange(grid_height), np.arange(grid_width), indexing="ij")
    angles_x = cols.reshape(-1, 1) * omega[None, :]
    angles_y = rows.reshape(-1, 1) * omega[None, :]
    embedding = np.concatenate(
        [np.sin(angles_x), np.cos(angles_x), np.sin(angles_y), np.cos(angles_y)], axis=1
    )
    return embedding.astype(np.float32)


class PatchEmbedding(nn.Module):
    """Linear projection of non-overlapping patches (a strided convolution).

    With `frozen`, the kernel and bias pass through `stop_gradient`, so they keep their random
    initialisation (MoCo v3). Their gradient is then exactly zero; the optimizer must also skip
    them so that weight decay does not shrink them.
    """

    patch_size: int
    width: int
    frozen: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        """Embed patches: images [batch, H, W, C] -> [batch, H // p, W // p, width]."""
        channels = images.shape[-1]
        # Fan-in p*p*C and fan-out width, as for the equivalent dense layer on flattened patches.
        kernel_init = nn.initializers.variance_scaling(
            1.0, "fan_avg", "uniform", in_axis=(0, 1, 2), out_axis=-1
        )
        kernel = self.param(
            "kernel", kernel_init, (self.patch_size, self.patch_size, channels, self.width)
        )
        bias = self.param("bias", nn.initializers.zeros, (self.width,))
        if self.frozen:
            kernel = jax.lax.stop_gradient(kernel)
            bias = jax.lax.stop_gradient(bias)

        kernel = kernel.astype(self.dtype)
        outputs = jax.lax.conv_general_dilated(
            images.astype(self.dtype),
            kernel,
            window_strides=(self.patch_size, self.patch_size),
            padding="VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return outputs + bias.astype(self.dtype)


class MlpBlock(nn.Module):
    """Transformer MLP: Dense(hidden) - GELU - Dense(width)."""

    hidden_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        x = nn.Dense(self.hidden_dim, kernel_init=DENSE_INIT, dtype=self.dtype, name="fc1")(x)
        # Exact (erf) GELU, the default of PyTorch's nn.GELU.
        x = nn.gelu(x, approximate=False)
        return nn.Dense(width, kernel_init=DENSE_INIT, dtype=self.dtype, name="fc2")(x)


class EncoderBlock(nn.Module):
    """Pre-norm Transformer block: x + Attn(LN(x)), then x + MLP(LN(x)), with stochastic depth."""

    num_heads: int
    mlp_dim: int
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32

    def _drop_path(self, x: jax.Array, train: bool) -> jax.Array:
        """Drop the residual branch per example with probability drop_path_rate (training only)."""
        if not train or self.drop_path_rate == 0.0:
            return x
        keep = 1.0 - self.drop_path_rate
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0], 1, 1))
        return jnp.where(mask, x / keep, jnp.zeros_like(x))

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Apply the block: x [batch, tokens, width] -> [batch, tokens, width]."""
        y = nn.LayerNorm(dtype=self.dtype, name="norm1")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            dtype=self.dtype,
            kernel_init=DENSE_INIT,
            deterministic=True,
            name="attention",
        )(y)
        x = x + self._drop_path(y, train)

        y = nn.LayerNorm(dtype=self.dtype, name="norm2")(x)
        y = MlpBlock(self.mlp_dim, dtype=self.dtype, name="mlp")(y)
        return x + self._drop_path(y, train)


class ViT(nn.Module):
    """Vision Transformer returning the CLS token after the final LayerNorm.

    Attributes:
      patch_size: side of the square patches in pixels; H and W must be multiples of it.
      width: hidden width (divisible by 4 and by num_heads).
      depth: number of Transformer blocks.
      num_heads: attention heads per block.
      mlp_ratio: MLP hidden width as a multiple of `width`.
      freeze_patch_embedding: keep the random patch projection fixed (MoCo v3). The params stay
        at params["patch_embedding"] of this module; the optimizer must mask them out.
      drop_path_rate: stochastic-depth rate, increasing linearly from 0 in the first block to
        this value in the last. Training with a rate above 0 needs a "dropout" rng.
      dtype: compute dtype (bfloat16 on TPU); params are always float32.
    """

    patch_size: int
    width: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    freeze_patch_embedding: bool = False
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32

    def _check_input(self, images: jax.Array) -> None:
        if images.ndim != 4:
            raise ValueError(
                f"ViT expects images [batch, height, width, channels], got shape {images.shape}."
            )
        height, width = images.shape[1:3]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"Image size {height}x{width} is not a multiple of patch_size={self.patch_size}; "
                "resize or crop the images, or choose a patch size that divides both sides."
            )
        if self.width % self.num_heads:
            raise ValueError(
                f"ViT width={self.width} is not divisible by num_heads={self.num_heads}."
            )

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        """Encode images.

        Args:
          images: [batch, H, W, C] float (any float dtype; cast to `dtype`).
          train: enables stochastic depth when drop_path_rate > 0.

        Returns:
          [batch, width] in `dtype`: the CLS token after the final LayerNorm.
        """
        self._check_input(images)
        x = PatchEmbedding(
            self.patch_size,
            self.width,
            frozen=self.freeze_patch_embedding,
            dtype=self.dtype,
            name="patch_embedding",
        )(images)
        batch, grid_height, grid_width, _ = x.shape
        x = x.reshape(batch, grid_height * grid_width, self.width)

        # A constant, not a parameter: recomputed for each grid at trace time.
        position_embedding = posemb_sincos_2d(grid_height, grid_width, self.width)
        x = x + jnp.asarray(position_embedding, dtype=self.dtype)[None]

        # The CLS token gets no position embedding (equivalently a zero one, as in MoCo v3).
        cls_token = self.param("cls_token", nn.initializers.normal(stddev=0.02), (1, 1, self.width))
        cls_token = jnp.broadcast_to(cls_token.astype(self.dtype), (batch, 1, self.width))
        x = jnp.concatenate([cls_token, x], axis=1)

        mlp_dim = int(self.width * self.mlp_ratio)
        for index in range(self.depth):
            rate = self.drop_path_rate * index / max(self.depth - 1, 1)
            x = EncoderBlock(
                self.num_heads, mlp_dim, drop_path_rate=rate, dtype=self.dtype,
                name=f"block_{index}",
            )(x, train=train)

        x = nn.LayerNorm(dtype=self.dtype, name="norm")(x)
        return x[:, 0]
