"""Tests of the weighted k-NN evaluator against a brute-force numpy computation."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bam_jax.evaluate import knn_predict, run_knn_eval


def _brute_force_knn(train_features, train_labels, test_features, num_classes, k, temperature):
    train = train_features / np.linalg.norm(train_features, axis=1, keepdims=True)
    test = test_features / np.linalg.norm(test_features, axis=1, keepdims=True)
    similarities = test.astype(np.float64) @ train.T.astype(np.float64)
    scores = np.zeros((test.shape[0], num_classes))
    for row in range(test.shape[0]):
        neighbours = np.argsort(-similarities[row])[:k]
        for index in neighbours:
            scores[row, train_labels[index]] += np.exp(similarities[row, index] / temperature)
    return scores.argmax(axis=1), scores


def _random_case(seed, num_train=200, num_test=50, dim=16, num_classes=5):
    rng = np.random.default_rng(seed)
    # Class-dependent means so that the vote is informative and not a coin toss.
    means = rng.normal(size=(num_classes, dim)) * 1.5
    train_labels = rng.integers(0, num_classes, num_train)
    test_labels = rng.integers(0, num_classes, num_test)
    train_features = (means[train_labels] + rng.normal(size=(num_train, dim))).astype(np.float32)
    test_features = (means[test_labels] + rng.normal(size=(num_test, dim))).astype(np.float32)
    return train_features, train_labels, test_features, test_labels


@pytest.mark.parametrize("k, temperature, batch_size", [(7, 0.07, 16), (20, 0.5, 64), (1, 0.07, 50)])
def test_knn_predict_matches_brute_force(k, temperature, batch_size):
    train_features, train_labels, test_features, test_labels = _random_case(0)
    predictions, scores = knn_predict(
        train_features, train_labels, test_features,
        num_classes=5, k=k, temperature=temperature, batch_size=batch_size,
    )
    expected_predictions, expected_scores = _brute_force_knn(
        train_features, train_labels, test_features, 5, k, temperature
    )
    assert predictions.shape == (50,)
    assert scores.shape == (50, 5)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4)
    np.testing.assert_array_equal(predictions, expected_predictions)
    top1 = 100.0 * np.mean(predictions == test_labels)
    expected_top1 = 100.0 * np.mean(expected_predictions == test_labels)
    assert top1 == expected_top1
    assert top1 > 40.0  # well above the 20% of chance level for 5 classes


def test_knn_predict_ignores_feature_scale():
    train_features, train_labels, test_features, _ = _random_case(1)
    scaled, _ = knn_predict(
        train_features * 7.0, train_labels, test_features * 0.1, num_classes=5, k=5
    )
    reference, _ = knn_predict(train_features, train_labels, test_features, num_classes=5, k=5)
    np.testing.assert_array_equal(scaled, reference)


def test_knn_predict_rejects_bad_arguments():
    train_features, train_labels, test_features, _ = _random_case(2, num_train=10)
    with pytest.raises(ValueError, match="k=11"):
        knn_predict(train_features, train_labels, test_features, num_classes=5, k=11)
    with pytest.raises(ValueError, match="num_classes"):
        knn_predict(train_features, train_labels, test_features, num_classes=3, k=5)
    with pytest.raises(ValueError, match="dimension"):
        knn_predict(train_features, train_labels, test_features[:, :8], num_classes=5, k=5)


def _batches(features, labels, batch_size, pad_features, pad_label):
    """Yield evaluation batches whose last batch is padded with masked-out entries."""
    num_examples = features.shape[0]
    for start in range(0, num_examples, batch_size):
        images = features[start : start + batch_size]
        batch_labels = labels[start : start + batch_size]
        valid = images.shape[0]
        mask = np.ones(batch_size, bool)
        if valid < batch_size:
            padding = batch_size - valid
            images = np.concatenate([images, pad_features[:padding]])
            batch_labels = np.concatenate([batch_labels, np.full(padding, pad_label)])
            mask[valid:] = False
        # Images of shape [b, 1, 1, dim], so that embed_fn is a reshape.
        yield {
            "image": images[:, None, None, :],
            "label": batch_labels.astype(np.int32),
            "mask": mask,
        }


def test_run_knn_eval_ignores_masked_padding():
    train_features, train_labels, test_features, test_labels = _random_case(3, 203, 45)
    # Padded train entries are exact copies of test features with a wrong label: if they took
    # part in the vote they would win it. Padded test entries would change num_test.
    wrong_labels = (test_labels + 1) % 5
    pad_label = int(wrong_labels[0])
    pad_train = np.repeat(test_features[:1], 32, axis=0)
    pad_test = np.zeros((32, 16), np.float32) + 1.0

    devices = np.array(jax.devices())
    mesh = Mesh(devices, ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    batch_size = 4 * len(devices)

    def embed_fn(images):
        # A global array sharded over all devices, as the trainer's jitted embed_fn returns.
        return jax.device_put(images.reshape(images.shape[0], -1), sharding)

    results = run_knn_eval(
        embed_fn,
        _batches(train_features, train_labels, batch_size, pad_train, pad_label),
        _batches(test_features, test_labels, batch_size, pad_test, 0),
        num_classes=5, k=10, temperature=0.07,
    )
    expected_predictions, _ = _brute_force_knn(
        train_features, train_labels, test_features, 5, 10, 0.07
    )
    assert results["num_train"] == 203
    assert results["num_test"] == 45
    expected_top1 = 100.0 * np.mean(expected_predictions == test_labels)
    assert results["knn_top1"] == pytest.approx(expected_top1)


def test_run_knn_eval_rejects_empty_iterator():
    with pytest.raises(ValueError, match="yielded no batches"):
        run_knn_eval(lambda images: images, iter([]), iter([]), num_classes=2)
