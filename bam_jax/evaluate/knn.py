"""Weighted k-nearest-neighbour classification of frozen features (the DINO k-NN protocol).

Each test feature votes with its k most cosine-similar train features: neighbour j adds
exp(sim_j / temperature) to the score of its label, and the class with the largest score wins.
"""

import functools
import time
from collections.abc import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec


def _l2_normalize(features: jax.Array) -> jax.Array:
    norm = jnp.linalg.norm(features, axis=-1, keepdims=True)
    # The floor keeps an all-zero feature at zero instead of producing NaN.
    return features / jnp.maximum(norm, 1e-12)


@functools.partial(jax.jit, static_argnames=("num_classes", "k"))
def _knn_class_scores(
    train_features: jax.Array,
    train_labels: jax.Array,
    test_features: jax.Array,
    *,
    num_classes: int,
    k: int,
    temperature: float,
) -> jax.Array:
    """Score one chunk of test features: [chunk, dim] -> [chunk, num_classes] float32.

    `train_features` must already be L2-normalised; the test chunk is normalised here.
    """
    test_features = _l2_normalize(test_features)
    similarities = jnp.matmul(
        test_features, train_features.T, precision=jax.lax.Precision.HIGHEST
    )  # [chunk, num_train]
    top_similarities, top_indices = jax.lax.top_k(similarities, k)  # [chunk, k]
    neighbour_labels = train_labels[top_indices]
    weights = jnp.exp(top_similarities / temperature)
    votes = jax.nn.one_hot(neighbour_labels, num_classes, dtype=jnp.float32) * weights[..., None]
    return votes.sum(axis=1)


def _check_knn_inputs(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    num_classes: int,
    k: int,
    temperature: float,
    batch_size: int,
) -> None:
    if train_features.ndim != 2 or test_features.ndim != 2:
        raise ValueError(
            "k-NN features must be [num_examples, dim]; got train "
            f"{train_features.shape} and test {test_features.shape}."
        )
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"Train and test features differ in dimension: {train_features.shape[1]} != "
            f"{test_features.shape[1]}."
        )
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(
            f"train_labels must have shape ({train_features.shape[0]},), got {train_labels.shape}."
        )
    if not 1 <= k <= train_features.shape[0]:
        raise ValueError(
            f"k={k} must be between 1 and the number of train examples "
            f"({train_features.shape[0]})."
        )
    if num_classes < 1 or temperature <= 0 or batch_size < 1:
        raise ValueError(
            f"num_classes ({num_classes}), temperature ({temperature}) and batch_size "
            f"({batch_size}) must be positive."
        )
    if train_labels.size and (train_labels.min() < 0 or train_labels.max() >= num_classes):
        raise ValueError(
            f"train_labels must lie in [0, {num_classes}); found values from "
            f"{train_labels.min()} to {train_labels.max()}. Check num_classes."
        )


def knn_predict(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    *,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Classify test features by a similarity-weighted vote of their k nearest train features.

    Features are L2-normalised here, so the similarity is the cosine similarity. The test set is
    processed in chunks of `batch_size`, so the similarity matrix held at once is
    [batch_size, num_train] float32 (61 MB for 256 x 60,000).

    Args:
      train_features: [num_train, dim] float (any float dtype; computed in float32).
      train_labels: [num_train] int in [0, num_classes).
      test_features: [num_test, dim] float.
      num_classes: number of classes.
      k: number of neighbours.
      temperature: the vote weight of a neighbour is exp(similarity / temperature).
      batch_size: test features scored per jitted call.

    Returns:
      predictions: int32 [num_test], the class with the largest score (ties: lowest class id).
      class_scores: float32 [num_test, num_classes], the summed vote weights.
    """
    train_features = np.asarray(train_features, dtype=np.float32)
    train_labels = np.asarray(train_labels).astype(np.int32)
    test_features = np.asarray(test_features, dtype=np.float32)
    _check_knn_inputs(
        train_features, train_labels, test_features, num_classes, k, temperature, batch_size
    )

    normalized_train = _l2_normalize(jnp.asarray(train_features))
    labels_on_device = jnp.asarray(train_labels)
    num_test = test_features.shape[0]
    chunks = []
    for start in range(0, num_test, batch_size):
        chunk = test_features[start : start + batch_size]
        valid = chunk.shape[0]
        # Pad the last chunk to the common shape so that the jitted function compiles once.
        if valid < batch_size:
            chunk = np.pad(chunk, ((0, batch_size - valid), (0, 0)))
        scores = _knn_class_scores(
            normalized_train,
            labels_on_device,
            jnp.asarray(chunk),
            num_classes=num_classes,
            k=k,
            temperature=temperature,
        )
        chunks.append(scores[:valid])

    if chunks:
        class_scores = np.asarray(jnp.concatenate(chunks, axis=0))
    else:
        class_scores = np.zeros((0, num_classes), np.float32)
    predictions = class_scores.argmax(axis=1).astype(np.int32)
    return predictions, class_scores


def _to_host(values: jax.Array | np.ndarray) -> np.ndarray:
    """Copy a (possibly multi-process) array to host memory in full.

    A global array that spans several processes is gathered from all of them, so every process
    receives the same rows in global order.
    """
    if isinstance(values, jax.Array) and not values.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(values, tiled=True))
    return np.asarray(values)


def _gather_rows_like(features: jax.Array, values: np.ndarray) -> np.ndarray:
    """Gather host-local values [b_local] from all processes in the row order of `features`.

    Labels and masks then stay aligned with the rows of the global features [B, dim].
    """
    sharding = features.sharding
    if not isinstance(sharding, NamedSharding):
        raise ValueError(
            "embed_fn returned a multi-process array without a NamedSharding "
            f"({type(sharding).__name__}); shard its batch axis with a NamedSharding."
        )
    batch_axis = sharding.spec[0] if len(sharding.spec) else None
    row_sharding = NamedSharding(sharding.mesh, PartitionSpec(batch_axis))
    global_values = jax.make_array_from_process_local_data(row_sharding, np.asarray(values))
    return np.asarray(multihost_utils.process_allgather(global_values, tiled=True))


def _collect_features(
    embed_fn: Callable[[np.ndarray], jax.Array | np.ndarray],
    batches: Iterable[Mapping[str, np.ndarray]],
    split: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Embed every batch and keep the entries whose mask is True.

    Returns:
      features: float32 [num_examples, dim]; labels: int32 [num_examples].
    """
    feature_batches, label_batches, mask_batches = [], [], []
    for batch in batches:
        features = embed_fn(batch["image"])
        labels, mask = batch["label"], batch["mask"]
        if isinstance(features, jax.Array) and not features.is_fully_addressable:
            labels = _gather_rows_like(features, labels)
            mask = _gather_rows_like(features, mask)
        elif jax.process_count() > 1:
            # Host-local features (e.g. raw pixels) cover only this host's share of the split,
            # so gather all rows, in process order, for every process to search the same ones.
            features, labels, mask = multihost_utils.process_allgather(
                (np.asarray(features), np.asarray(labels), np.asarray(mask)), tiled=True
            )
        # Keep device arrays until the end so that embedding overlaps with reading the next batch.
        feature_batches.append(features)
        label_batches.append(np.asarray(labels))
        mask_batches.append(np.asarray(mask, dtype=bool))

    if not feature_batches:
        raise ValueError(f"The k-NN {split} iterator yielded no batches.")
    features = np.concatenate([_to_host(f).astype(np.float32) for f in feature_batches])
    labels = np.concatenate(label_batches).astype(np.int32)
    mask = np.concatenate(mask_batches)
    if features.ndim != 2 or features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"embed_fn returned features of shape {features.shape} for {labels.shape[0]} "
            f"{split} labels; it must return [batch, dim] with one row per image."
        )
    return features[mask], labels[mask]


def run_knn_eval(
    embed_fn: Callable[[np.ndarray], jax.Array | np.ndarray],
    train_iter: Iterable[Mapping[str, np.ndarray]],
    test_iter: Iterable[Mapping[str, np.ndarray]],
    *,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    batch_size: int = 256,
) -> dict[str, float | int]:
    """Embed a train and a test split and report weighted k-NN top-1 accuracy on the test split.

    Args:
      embed_fn: maps host-local images [b, H, W, C] to features [b, dim] (numpy or a jax.Array,
        possibly a global array spanning processes). With several processes, host-local
        features are gathered from all of them. Features need not be normalised. For a
        raw-pixel baseline pass `lambda images: images.reshape(len(images), -1)`.
      train_iter, test_iter: yield {"image": [b, H, W, C], "label": int [b], "mask": bool [b]};
        entries with mask False are padding and are ignored. With several processes, every
        process must yield the same number of batches.
      num_classes, k, temperature, batch_size: as in `knn_predict`.

    Returns:
      {"knn_top1": accuracy in percent, "num_train": int, "num_test": int}.
    """
    start = time.perf_counter()
    train_features, train_labels = _collect_features(embed_fn, train_iter, "train")
    test_features, test_labels = _collect_features(embed_fn, test_iter, "test")
    embed_seconds = time.perf_counter() - start

    predictions, _ = knn_predict(
        train_features,
        train_labels,
        test_features,
        num_classes=num_classes,
        k=k,
        temperature=temperature,
        batch_size=batch_size,
    )
    if test_labels.size == 0:
        raise ValueError("The k-NN test split has no unmasked examples.")
    top1 = 100.0 * float(np.mean(predictions == test_labels))
    logging.info(
        "k-NN (k=%d, T=%g): top-1 %.2f%% on %d test vs %d train examples; embedding %.1fs, "
        "total %.1fs.",
        k, temperature, top1, test_labels.size, train_labels.size, embed_seconds,
        time.perf_counter() - start,
    )
    return {"knn_top1": top1, "num_train": int(train_labels.size), "num_test": int(test_labels.size)}
