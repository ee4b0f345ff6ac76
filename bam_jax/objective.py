"""The BAM objective: balanced self-attention matching over the global batch.

Notation used throughout (shapes are per device):
  V  crops per image, the first G of them global;
  b  images on this device, B images in the global batch (b == B on one device);
  D  projection dimension;
  K = G * B  keys: the teacher's global-crop embeddings of the whole global batch, crop-major
     (all images of global crop 0, then all images of global crop 1, ...).

Every crop of image i attends to the K keys with the G keys of image i itself masked out. The
teacher's attention rows, divided by `epsilon`, are balanced over the global batch by a few
Sinkhorn iterations in float32 and the log domain, then optionally restricted to their top-k
keys. They become the targets for the student's attention `softmax(rows / temperature)` of
every other crop. The functions here are pure and shard-aware. With `axis_name` set they run
inside `jax.shard_map` on the local shard of the batch and gather the keys with `all_gather`.
They reduce the Sinkhorn column statistics with `psum`/`pmax` and return the global loss on
every device.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec

# torch.nn.functional.normalize's default, so that near-zero vectors normalise identically.
_NORMALIZE_EPS = 1e-12

DIAGNOSTIC_NAMES = (
    "sinkhorn_marginal_error",
    "target_entropy",
    "source_entropy",
    "top_k_mass",
)


def _l2_normalize(x: jax.Array) -> jax.Array:
  norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
  return x / jnp.maximum(norm, _NORMALIZE_EPS)


def _pmax(x: jax.Array, axis_name: str | None) -> jax.Array:
  return x if axis_name is None else lax.pmax(x, axis_name)


def _psum(x: jax.Array, axis_name: str | None) -> jax.Array:
  return x if axis_name is None else lax.psum(x, axis_name)


def _axis_size(axis_name: str | None) -> int:
  return 1 if axis_name is None else lax.axis_size(axis_name)


def _validate(student: jax.Array, teacher: jax.Array | None, *, num_global_crops: int,
              temperature: float, epsilon: float, sinkhorn_iterations: int, top_k: int,
              global_batch: int) -> None:
  """Raises ValueError for arguments that have no meaningful BAM loss."""
  if student.ndim != 3:
    raise ValueError(
        f"student must be [crops, batch, dim], got shape {student.shape}; put the crop axis "
        "first (crop-major).")
  num_crops = student.shape[0]
  if num_crops < 2:
    raise ValueError(
        f"BAM needs at least 2 crops per image, got {num_crops}: the loss compares each global "
        "crop's target with the other crops.")
  if not 1 <= num_global_crops <= num_crops:
    raise ValueError(
        f"num_global_crops={num_global_crops} must be between 1 and the number of crops "
        f"({num_crops}).")
  if teacher is not None and teacher.shape != student.shape:
    raise ValueError(
        f"teacher shape {teacher.shape} does not match student shape {student.shape}; both "
        "must be [crops, batch, dim], or pass teacher=None for single-network mode.")
  if not temperature > 0:
    raise ValueError(f"temperature must be positive, got {temperature}.")
  if not epsilon > 0:
    raise ValueError(f"epsilon must be positive, got {epsilon}.")
  if sinkhorn_iterations < 0:
    raise ValueError(f"sinkhorn_iterations must be >= 0, got {sinkhorn_iterations}.")
  if global_batch < 2:
    raise ValueError(
        f"the global batch has {global_batch} image(s); BAM needs at least 2 because every "
        "image's own keys are masked.")
  unmasked_keys = num_global_crops * global_batch - num_global_crops
  if top_k < 0 or top_k > unmasked_keys:
    raise ValueError(
        f"top_k={top_k} must be between 0 (off) and the number of unmasked keys per row, "
        f"{unmasked_keys} (= num_global_crops * (global batch - 1)).")


def _positive_mask(local_batch: int, num_global_crops: int, global_batch: int,
                   axis_name: str | None) -> jax.Array:
  """Returns `[b, K]` bool, True where key `(g, j)` belongs to the row's own image."""
  offset = 0 if axis_name is None else lax.axis_index(axis_name) * local_batch
  image = offset + lax.broadcasted_iota(jnp.int32, (local_batch, 1), 0)
  key_image = lax.broadcasted_iota(jnp.int32, (1, num_global_crops * global_batch), 1)
  return image == key_image % global_batch


def _gather_keys(embeddings: jax.Array, num_global_crops: int,
                 axis_name: str | None) -> jax.Array:
  """Returns the keys `[K, D]` from the local global-crop embeddings `[V, b, D]`."""
  keys = embeddings[:num_global_crops]
  if axis_name is not None:
    # Tiled gather along the batch axis keeps device order, so key (g, j) is image j's crop g.
    keys = lax.all_gather(keys, axis_name, axis=1, tiled=True)
  return keys.reshape(-1, keys.shape[-1])


# The maximum below is taken of `logits - (-potential)`, which equals `logits + potential`
# exactly but is not the same expression as the exponent's. XLA therefore fuses each into its
# own reduction instead of first writing the shared sum, a full `[V, b, K]` array, to memory.


def _logsumexp_over_rows(logits: jax.Array, row: jax.Array,
                         axis_name: str | None) -> jax.Array:
  """Returns `logsumexp(logits + row[..., None])` over the crops and the global batch, `[K]`."""
  x_max = _pmax(jnp.max(logits - (-row[..., None]), axis=(0, 1)), axis_name)
  x_max = lax.stop_gradient(jnp.where(jnp.isfinite(x_max), x_max, 0.0))
  total = _psum(jnp.sum(jnp.exp(logits + row[..., None] - x_max), axis=(0, 1)), axis_name)
  return x_max + jnp.log(total)


def _logsumexp_over_keys(logits: jax.Array, column: jax.Array) -> jax.Array:
  """Returns `logsumexp(logits + column)` over the keys, `[V, b]`."""
  x_max = jnp.max(logits - (-column), axis=-1, keepdims=True)
  x_max = lax.stop_gradient(jnp.where(jnp.isfinite(x_max), x_max, 0.0))
  total = jnp.sum(jnp.exp(logits + column - x_max), axis=-1)
  return x_max[..., 0] + jnp.log(total)


def _sinkhorn_potentials(logits: jax.Array, *, num_global_crops: int, global_batch: int,
                         iterations: int, axis_name: str | None
                         ) -> tuple[jax.Array, jax.Array]:
  """Runs log-domain Sinkhorn on `logits` `[V, b, K]` and returns the row and column potentials.

  The balanced plan is `exp(logits + row[..., None] + column)`: every key column sums to
  `1 / (K - G)` and every row to `1 / (V * B)` (the row step comes last, so rows are exact and
  columns approximate after a finite number of iterations). Carrying the potentials instead of
  the scaled matrix reads `logits` four times per iteration (a maximum and a sum per step) and
  writes nothing of size `V * b * K`.
  The initial normalisation of the plan to total mass 1 is a constant shift that the first column
  step absorbs, so it is skipped.
  """
  num_crops, _, num_keys = logits.shape
  log_column_mass = -jnp.log(jnp.float32(num_keys - num_global_crops))
  log_row_mass = -jnp.log(jnp.float32(num_crops * global_batch))

  def iteration(_, potentials):
    row, _ = potentials
    column = log_column_mass - _logsumexp_over_rows(logits, row, axis_name)
    row = log_row_mass - _logsumexp_over_keys(logits, column)
    return row, column

  # Derived from `logits` so that, under shard_map, the row potentials vary over the batch
  # axis like the rows themselves while the column potentials stay replicated.
  row = jnp.zeros_like(logits[..., 0])
  column = jnp.zeros((num_keys,), jnp.float32)
  return lax.fori_loop(0, iterations, iteration, (row, column))


def _keep_top_k(targets: jax.Array, top_k: int) -> tuple[jax.Array, jax.Array]:
  """Zeroes all but the top-k keys of each image and renormalises each row.

  Args:
    targets: `[G, b, K]` rows that sum to 1.
    top_k: keys kept per image, chosen from the average over the image's G global crops, so that
      all of an image's global crops keep the same keys.

  Returns:
    The renormalised targets `[G, b, K]` and the kept mass of each row before renormalisation,
    `[G, b]`.
  """
  _, top_indices = lax.top_k(jnp.mean(targets, axis=0), top_k)
  keep = jnp.zeros(targets.shape[1:], jnp.bool_)
  keep = keep.at[jnp.arange(targets.shape[1])[:, None], top_indices].set(True)
  kept = jnp.where(keep, targets, 0.0)
  kept_mass = jnp.sum(kept, axis=-1)
  return kept / kept_mass[..., None], kept_mass


def _teacher_logits(teacher: jax.Array, keys: jax.Array, positive_mask: jax.Array,
                    epsilon: float, precision: lax.Precision) -> jax.Array:
  logits = jnp.einsum("vbd,kd->vbk", teacher, keys, precision=precision) / epsilon
  return jnp.where(positive_mask, -jnp.inf, logits)


def _targets_and_statistics(teacher: jax.Array, keys: jax.Array, positive_mask: jax.Array, *,
                            num_global_crops: int, global_batch: int, epsilon: float,
                            sinkhorn_iterations: int, top_k: int, axis_name: str | None,
                            precision: lax.Precision) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Returns the balanced targets `[G, b, K]` and their (global) statistics."""
  logits = _teacher_logits(teacher, keys, positive_mask, epsilon, precision)
  row, column = _sinkhorn_potentials(
      logits, num_global_crops=num_global_crops, global_batch=global_batch,
      iterations=sinkhorn_iterations, axis_name=axis_name)

  # Key marginal of the whole plan, as a distribution. Its total-variation distance from uniform
  # measures how balanced the targets are after the last iteration.
  column_log_mass = _logsumexp_over_rows(logits, row, axis_name) + column
  column_distribution = jax.nn.softmax(column_log_mass)
  marginal_error = 0.5 * jnp.sum(jnp.abs(column_distribution - 1.0 / logits.shape[-1]))

  # Only the global crops' rows become targets; each is normalised to sum to 1.
  global_logits = logits[:num_global_crops] + column
  targets = jax.nn.softmax(global_logits, axis=-1)
  if top_k:
    targets, kept_mass = _keep_top_k(targets, top_k)
  else:
    kept_mass = jnp.ones(targets.shape[:2], jnp.float32)

  entropy = -jnp.sum(jnp.where(targets > 0, targets * jnp.log(targets), 0.0), axis=-1)
  num_rows = num_global_crops * global_batch
  statistics = {
      "sinkhorn_marginal_error": marginal_error,
      "target_entropy": _psum(jnp.sum(entropy), axis_name) / num_rows,
      "top_k_mass": _psum(jnp.sum(kept_mass), axis_name) / num_rows,
  }
  return targets, statistics


def _sum_over_other_global_crops(per_global_crop: jax.Array, num_crops: int) -> jax.Array:
  """Returns, for each of the V crops, the sum over the G global crops other than itself.

  Args:
    per_global_crop: `[G, ...]` values of the global crops.
    num_crops: V.

  Returns:
    `[V, ...]`: crop v < G gets the sum over g != v; a local crop gets the sum over all g.
  """
  total = jnp.sum(per_global_crop, axis=0, keepdims=True)
  padding = [(0, num_crops - per_global_crop.shape[0])] + [(0, 0)] * (per_global_crop.ndim - 1)
  return total - jnp.pad(per_global_crop, padding)


def _batch_sizes(student: jax.Array, axis_name: str | None) -> tuple[int, int]:
  local_batch = student.shape[1]
  return local_batch, local_batch * _axis_size(axis_name)


def _embeddings_and_keys(student: jax.Array, teacher: jax.Array | None, num_global_crops: int,
                         axis_name: str | None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Returns the normalised float32 student, the no-gradient teacher and the keys."""
  student = _l2_normalize(student.astype(jnp.float32))
  if teacher is None:
    # Single-network mode: the keys are the student's own global crops and carry gradient.
    keys = _gather_keys(student, num_global_crops, axis_name)
    teacher = student
  else:
    teacher = _l2_normalize(teacher.astype(jnp.float32))
    keys = _gather_keys(teacher, num_global_crops, axis_name)
  return student, lax.stop_gradient(teacher), keys


def balanced_targets(teacher: jax.Array, *, num_global_crops: int = 2, epsilon: float = 0.05,
                     sinkhorn_iterations: int = 3, top_k: int = 0, axis_name: str | None = None,
                     precision: lax.Precision = lax.Precision.HIGHEST) -> jax.Array:
  """Computes BAM's balanced attention targets from raw teacher projections.

  Args:
    teacher: `[V, b, D]` raw (not normalised) projections, crop-major, any float dtype. In
      single-network mode pass the student's projections.
    num_global_crops: G, the leading crops that provide keys and targets.
    epsilon: Sinkhorn regularisation; the teacher's cosine similarities are divided by it.
    sinkhorn_iterations: column-then-row scaling steps.
    top_k: keys kept per image (0 keeps all).
    axis_name: the batch's mesh axis when called inside `shard_map`, else None.
    precision: matmul precision of the similarities (HIGHEST keeps float32 on TPU).

  Returns:
    `[G, b, K]` float32 targets with `K = G * B` keys; each row sums to 1 and is 0 at the row's
    own image's keys. No gradient flows through them.
  """
  local_batch, global_batch = _batch_sizes(teacher, axis_name)
  _validate(teacher, None, num_global_crops=num_global_crops, temperature=1.0, epsilon=epsilon,
            sinkhorn_iterations=sinkhorn_iterations, top_k=top_k, global_batch=global_batch)
  teacher = lax.stop_gradient(_l2_normalize(teacher.astype(jnp.float32)))
  keys = _gather_keys(teacher, num_global_crops, axis_name)
  mask = _positive_mask(local_batch, num_global_crops, global_batch, axis_name)
  targets, _ = _targets_and_statistics(
      teacher, keys, mask, num_global_crops=num_global_crops, global_batch=global_batch,
      epsilon=epsilon, sinkhorn_iterations=sinkhorn_iterations, top_k=top_k,
      axis_name=axis_name, precision=precision)
  return targets


def bam_loss_with_diagnostics(
    student: jax.Array, teacher: jax.Array | None, *, num_global_crops: int = 2,
    temperature: float = 0.1, epsilon: float = 0.05, sinkhorn_iterations: int = 3,
    top_k: int = 0, axis_name: str | None = None,
    precision: lax.Precision = lax.Precision.HIGHEST
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Computes the BAM loss and the diagnostics that training logs show.

  Arguments are those of `bam_loss`. The diagnostics are float32 scalars, identical on every
  device, with no gradient:
    sinkhorn_marginal_error: total-variation distance between the balanced plan's key marginal
      and the uniform distribution (0 is perfectly balanced).
    target_entropy: mean entropy of the global crops' target rows, in nats.
    source_entropy: mean entropy of the student's attention rows over all crops, in nats.
    top_k_mass: mean mass of a target row that the top-k keys held before renormalisation
      (1 when top_k is 0).
  """
  local_batch, global_batch = _batch_sizes(student, axis_name)
  _validate(student, teacher, num_global_crops=num_global_crops, temperature=temperature,
            epsilon=epsilon, sinkhorn_iterations=sinkhorn_iterations, top_k=top_k,
            global_batch=global_batch)
  num_crops = student.shape[0]

  student, teacher, keys = _embeddings_and_keys(student, teacher, num_global_crops, axis_name)
  mask = _positive_mask(local_batch, num_global_crops, global_batch, axis_name)
  targets, statistics = _targets_and_statistics(
      teacher, lax.stop_gradient(keys), mask, num_global_crops=num_global_crops,
      global_batch=global_batch, epsilon=epsilon, sinkhorn_iterations=sinkhorn_iterations,
      top_k=top_k, axis_name=axis_name, precision=precision)
  targets = lax.stop_gradient(targets)

  # Source attention of every crop: softmax over the unmasked keys of logits / temperature.
  logits = jnp.einsum("vbd,kd->vbk", student, keys, precision=precision) / temperature
  logits = jnp.where(mask, -jnp.inf, logits)
  log_normalizer = jax.nn.logsumexp(logits, axis=-1)

  # The loss averages CE(target of global crop g, attention of crop v) over the pairs v != g.
  # It is linear in the targets, so crop v is matched once against the sum of the other global
  # crops' targets. With log q = logits - log_normalizer, each row's cross-entropy is
  #   target_mass * log_normalizer - student . (targets @ keys) / temperature,
  # which never materialises log q or a [V, b, K] target: only the global crops' targets meet
  # the keys, in a matmul G / V the size of the similarities.
  target_keys = jnp.einsum("gbk,kd->gbd", targets, keys, precision=precision)
  target_mass = jnp.sum(targets, axis=-1)
  matched_keys = _sum_over_other_global_crops(target_keys, num_crops)
  matched_mass = _sum_over_other_global_crops(target_mass, num_crops)
  cross_entropy = (jnp.sum(matched_mass * log_normalizer)
                   - jnp.sum(student * matched_keys) / temperature)
  num_pairs = num_global_crops * (num_crops - 1)
  loss = _psum(cross_entropy, axis_name) / (num_pairs * global_batch)

  # Entropy of a row: log_normalizer - sum(q * logits), over the unmasked keys.
  logits, log_normalizer = lax.stop_gradient((logits, log_normalizer))
  attention = jnp.exp(logits - log_normalizer[..., None])
  expected_logit = jnp.sum(jnp.where(mask, 0.0, attention * logits), axis=-1)
  source_entropy = jnp.sum(log_normalizer - expected_logit)
  statistics["source_entropy"] = (
      _psum(source_entropy, axis_name) / (num_crops * global_batch))
  return loss, statistics


def bam_loss(student: jax.Array, teacher: jax.Array | None, *, num_global_crops: int = 2,
             temperature: float = 0.1, epsilon: float = 0.05, sinkhorn_iterations: int = 3,
             top_k: int = 0, axis_name: str | None = None,
             precision: lax.Precision = lax.Precision.HIGHEST) -> jax.Array:
  """Computes the BAM loss, the global-batch mean, as a float32 scalar.

  Args:
    student: `[V, b, D]` raw student projections, crop-major, any float dtype.
    teacher: `[V, b, D]` raw EMA-teacher projections (no gradient flows into them), or None for
      single-network mode, where the keys come from `student` and carry gradient.
    num_global_crops: G, the leading crops that provide keys and targets.
    temperature: divides the student's cosine similarities before the softmax.
    epsilon: Sinkhorn regularisation; divides the teacher's cosine similarities.
    sinkhorn_iterations: column-then-row scaling steps, run in float32 and the log domain.
    top_k: keys kept per image in the targets (0 keeps all).
    axis_name: None when `b` is the whole global batch. Inside `shard_map` on the local shard,
      the batch's mesh axis, and the result is then the global loss on every device.
    precision: matmul precision of the similarities (HIGHEST keeps float32 on TPU).

  Raises:
    ValueError: for fewer than 2 crops, `num_global_crops` outside `[1, V]`, mismatched
      shapes, non-positive `temperature` or `epsilon`, or `top_k` above the number of unmasked
      keys per row.
  """
  loss, _ = bam_loss_with_diagnostics(
      student, teacher, num_global_crops=num_global_crops, temperature=temperature,
      epsilon=epsilon, sinkhorn_iterations=sinkhorn_iterations, top_k=top_k,
      axis_name=axis_name, precision=precision)
  return loss


def make_sharded_bam_loss(
    mesh: Mesh, *, axis_name: str = "data", **loss_kwargs
) -> Callable[[jax.Array, jax.Array | None], tuple[jax.Array, dict[str, jax.Array]]]:
  """Wraps `bam_loss_with_diagnostics` in `shard_map` over the batch axis of `mesh`.

  The returned function takes global arrays `student` and `teacher` (`[V, B, D]`, or None for
  the teacher) whose batch axis is split over `axis_name`, and returns the global loss and
  diagnostics, replicated. Each device holds only `[V, B / devices, G * B]` similarities.

  Raises:
    ValueError: if `axis_name` is not an axis of `mesh`, or the batch is not divisible by the
      axis size (when the function is called).
  """
  if axis_name not in mesh.shape:
    raise ValueError(
        f"axis_name={axis_name!r} is not an axis of the mesh; its axes are "
        f"{tuple(mesh.shape)}.")
  num_shards = mesh.shape[axis_name]
  batch_spec = PartitionSpec(None, axis_name, None)
  local_loss = functools.partial(bam_loss_with_diagnostics, axis_name=axis_name, **loss_kwargs)
  with_teacher = jax.shard_map(
      local_loss, mesh=mesh, in_specs=(batch_spec, batch_spec),
      out_specs=(PartitionSpec(), PartitionSpec()))
  single_network = jax.shard_map(
      lambda student: local_loss(student, None), mesh=mesh, in_specs=(batch_spec,),
      out_specs=(PartitionSpec(), PartitionSpec()))

  def sharded_loss(student: jax.Array, teacher: jax.Array | None):
    if student.ndim != 3 or student.shape[1] % num_shards:
      raise ValueError(
          f"student shape {student.shape}: the batch (axis 1) must be divisible by the "
          f"{num_shards} devices of mesh axis {axis_name!r}; change the global batch size to a "
          f"multiple of {num_shards}.")
    if teacher is None:
      return single_network(student)
    return with_teacher(student, teacher)

  return sharded_loss
