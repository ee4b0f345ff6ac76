"""Projection head that maps backbone features to the space where the BAM objective is computed."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bam_jax.models.vit import DENSE_INIT


class ProjectionHead(nn.Module):
    """MLP head: (num_layers - 1) x [Dense(hidden_dim) - GELU], then Dense(output_dim).

    The published BAM recipe uses three layers, Linear(d, 4096)-GELU-Linear(4096, 4096)-GELU-
    Linear(4096, 4096). Param names: "hidden_0", ..., "hidden_{num_layers - 2}", "output".

    Attributes:
      hidden_dim: width of the hidden layers.
      output_dim: projection dimension D.
      num_layers: number of Dense layers, at least 1 (1 is a single linear projection).
      dtype: compute dtype; params are float32.
    """

    hidden_dim: int = 4096
    output_dim: int = 4096
    num_layers: int = 3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        """Project features [batch, width] -> [batch, output_dim] in `dtype`."""
        if self.num_layers < 1:
            raise ValueError(
                f"Invalid ProjectionHead num_layers={self.num_layers}: it must be at least 1."
            )
        x = features
        for index in range(self.num_layers - 1):
            x = nn.Dense(
                self.hidden_dim, kernel_init=DENSE_INIT, dtype=self.dtype, name=f"hidden_{index}"
            )(x)
            x = nn.gelu(x, approximate=False)
        return nn.Dense(self.output_dim, kernel_init=DENSE_INIT, dtype=self.dtype, name="output")(x)
