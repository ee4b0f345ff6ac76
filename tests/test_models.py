"""Tests of the ViT backbone, the projection head and the multi-crop BAMNetwork."""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bam_jax.models import VIT_VARIANTS, BAMNetwork, ProjectionHead, ViT, posemb_sincos_2d

TINY_VIT = {"width": 32, "depth": 2, "num_heads": 2}


def _init(model, *args):
    # Jitted, because op-by-op (eager) execution of a ViT takes seconds per call on a CPU.
    return jax.jit(model.init)(jax.random.key(0), *args)


def _apply(model, variables, *args, **kwargs):
    return jax.jit(functools.partial(model.apply, **kwargs))(variables, *args)


def _random_images(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.mark.parametrize(
    "patch_size, height, width, channels",
    [(4, 28, 28, 1), (4, 12, 12, 1), (2, 8, 12, 3), (7, 28, 28, 1), (16, 32, 48, 3)],
)
def test_vit_output_shape(patch_size, height, width, channels):
    model = ViT(patch_size=patch_size, **TINY_VIT)
    images = _random_images(0, (3, height, width, channels))
    variables = _init(model, images)
    outputs = _apply(model, variables, images)
    assert outputs.shape == (3, TINY_VIT["width"])
    assert outputs.dtype == jnp.float32
    assert np.all(np.isfinite(outputs))


def test_vit_shares_params_across_grids():
    model = ViT(patch_size=4, **TINY_VIT)
    variables = _init(model, _random_images(0, (2, 28, 28, 1)))
    # The same params must apply to a different grid, because local crops use the global model.
    small = _apply(model, variables, _random_images(1, (2, 12, 12, 1)))
    assert small.shape == (2, TINY_VIT["width"])


def test_posemb_matches_formula():
    grid_height, grid_width, width = 3, 5, 16
    embedding = posemb_sincos_2d(grid_height, grid_width, width)
    assert embedding.shape == (grid_height * grid_width, width)
    assert embedding.dtype == np.float32

    quarter = width // 4
    for row in range(grid_height):
        for col in range(grid_width):
            token = embedding[row * grid_width + col]
            for i in range(quarter):
                frequency = 10_000.0 ** (-i / quarter)
                np.testing.assert_allclose(token[i], np.sin(col * frequency), atol=1e-6)
                np.testing.assert_allclose(token[quarter + i], np.cos(col * frequency), atol=1e-6)
                np.testing.assert_allclose(token[2 * quarter + i], np.sin(row * frequency), atol=1e-6)
                np.testing.assert_allclose(token[3 * quarter + i], np.cos(row * frequency), atol=1e-6)


def test_posemb_rejects_width_not_multiple_of_4():
    with pytest.raises(ValueError, match="divisible by 4"):
        posemb_sincos_2d(2, 2, 18)


def test_position_embedding_is_not_a_param():
    model = ViT(patch_size=4, **TINY_VIT)
    params = _init(model, _random_images(0, (1, 16, 16, 1)))["params"]
    assert set(params) == {"patch_embedding", "cls_token", "block_0", "block_1", "norm"}
    flat_names = ["/".join(path) for path in flax.traverse_util.flatten_dict(params)]
    assert not any("pos" in name for name in flat_names)


def test_vit_output_depends_on_patch_position():
    # Swapping two patches changes the output only through the position embedding.
    model = ViT(patch_size=4, **TINY_VIT)
    images = _random_images(0, (1, 8, 8, 1))
    swapped = jnp.concatenate([images[:, :, 4:], images[:, :, :4]], axis=2)
    variables = _init(model, images)
    original = _apply(model, variables, images)
    difference = jnp.abs(original - _apply(model, variables, swapped)).max()
    assert difference > 1e-3


def test_vit_rejects_size_not_multiple_of_patch():
    model = ViT(patch_size=4, **TINY_VIT)
    with pytest.raises(ValueError, match="not a multiple of patch_size=4"):
        _init(model, _random_images(0, (1, 30, 28, 1)))


@pytest.mark.parametrize("frozen", [True, False])
def test_patch_embedding_gradient(frozen):
    model = ViT(patch_size=4, freeze_patch_embedding=frozen, **TINY_VIT)
    images = _random_images(0, (4, 16, 16, 1))
    params = _init(model, images)["params"]

    def loss_fn(params):
        return jnp.sum(_apply(model, {"params": params}, images, train=True) ** 2)

    grads = jax.jit(jax.grad(loss_fn))(params)
    patch_grad_norm = sum(
        float(jnp.abs(g).sum()) for g in jax.tree_util.tree_leaves(grads["patch_embedding"])
    )
    if frozen:
        assert patch_grad_norm == 0.0
    else:
        assert patch_grad_norm > 0.0
    assert float(jnp.abs(grads["block_0"]["mlp"]["fc1"]["kernel"]).sum()) > 0.0


def test_drop_path_needs_rng_and_is_off_in_eval():
    model = ViT(patch_size=4, drop_path_rate=0.5, **TINY_VIT)
    images = _random_images(0, (8, 8, 8, 1))
    variables = _init(model, images)
    eval_a = _apply(model, variables, images)
    eval_b = _apply(model, variables, images)
    np.testing.assert_array_equal(eval_a, eval_b)

    train = _apply(model, variables, images, train=True, rngs={"dropout": jax.random.key(1)})
    assert float(jnp.abs(train - eval_a).max()) > 1e-4


def test_projection_head_layers():
    head = ProjectionHead(hidden_dim=24, output_dim=10, num_layers=3)
    features = _random_images(0, (5, 8))
    params = _init(head, features)["params"]
    assert set(params) == {"hidden_0", "hidden_1", "output"}
    assert params["hidden_0"]["kernel"].shape == (8, 24)
    assert params["output"]["kernel"].shape == (24, 10)
    assert _apply(head, {"params": params}, features).shape == (5, 10)

    linear = ProjectionHead(hidden_dim=24, output_dim=10, num_layers=1)
    assert set(_init(linear, features)["params"]) == {"output"}


def _tiny_network(**kwargs):
    return BAMNetwork(
        patch_size=4, **TINY_VIT, head_hidden_dim=16, head_output_dim=12, head_layers=3, **kwargs
    )


def test_bam_network_crop_major_order():
    batch, num_global, num_local = 3, 2, 4
    model = _tiny_network()
    global_crops = _random_images(0, (batch, num_global, 16, 16, 1))
    local_crops = _random_images(1, (batch, num_local, 8, 8, 1))
    variables = _init(model, global_crops, local_crops)
    assert set(variables["params"]) == {"backbone", "head"}

    outputs = _apply(model, variables, global_crops, local_crops)
    projections, features = outputs["projections"], outputs["features"]
    assert projections.shape == (num_global + num_local, batch, 12)
    assert features.shape == (num_global, batch, TINY_VIT["width"])
    assert projections.dtype == jnp.float32

    def project(module, images):
        return module.head(module.backbone(images))

    # Build the expected crop-major order explicitly: crop 0 of every image, then crop 1, ...
    expected_global = jnp.stack(
        [global_crops[image, crop] for crop in range(num_global) for image in range(batch)]
    )
    expected_local = jnp.stack(
        [local_crops[image, crop] for crop in range(num_local) for image in range(batch)]
    )
    expected = jnp.concatenate(
        [
            _apply(model, variables, expected_global, method=project),
            _apply(model, variables, expected_local, method=project),
        ]
    ).reshape(num_global + num_local, batch, 12)
    np.testing.assert_allclose(projections, expected, rtol=1e-4, atol=1e-5)

    for crop in range(num_global):
        embedded = _apply(model, variables, global_crops[:, crop], method="embed")
        np.testing.assert_allclose(features[crop], embedded, rtol=1e-4, atol=1e-5)


def test_bam_network_without_local_crops():
    model = _tiny_network()
    global_crops = _random_images(0, (2, 2, 16, 16, 1))
    variables = _init(model, global_crops, None)
    assert _apply(model, variables, global_crops, None)["projections"].shape == (2, 2, 12)
    no_locals = jnp.zeros((2, 0, 8, 8, 1))
    assert _apply(model, variables, global_crops, no_locals)["projections"].shape == (2, 2, 12)


def test_bam_network_rejects_bad_shapes():
    model = _tiny_network()
    with pytest.raises(ValueError, match="global_crops must be"):
        _init(model, _random_images(0, (2, 16, 16, 1)), None)
    with pytest.raises(ValueError, match="batch size"):
        model.init(
            jax.random.key(0),
            _random_images(0, (2, 2, 16, 16, 1)),
            _random_images(1, (3, 2, 8, 8, 1)),
        )


def test_bfloat16_compute_path():
    global_crops = _random_images(0, (2, 2, 16, 16, 1))
    local_crops = _random_images(1, (2, 2, 8, 8, 1))
    model_f32 = _tiny_network()
    model_bf16 = _tiny_network(dtype=jnp.bfloat16)
    variables = _init(model_bf16, global_crops, local_crops)

    param_dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)}
    assert param_dtypes == {jnp.dtype(jnp.float32)}

    outputs = _apply(model_bf16, variables, global_crops, local_crops)
    assert outputs["projections"].dtype == jnp.float32
    assert np.all(np.isfinite(outputs["projections"]))
    assert _apply(model_bf16, variables, global_crops[:, 0], method="embed").dtype == jnp.bfloat16

    reference = _apply(model_f32, variables, global_crops, local_crops)["projections"]
    np.testing.assert_allclose(outputs["projections"], reference, rtol=0.1, atol=0.1)


def test_vit_base_16_param_count():
    model = ViT(patch_size=16, **VIT_VARIANTS["base"])
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    num_params = sum(leaf.size for leaf in jax.tree_util.tree_leaves(shapes))
    # A ViT-B/16 with a learned position embedding for 197 tokens has 85,798,656 params without
    # its classifier. Here that embedding (197 x 768 = 151,296 values) is a constant.
    assert num_params == 85_798_656 - 197 * 768
    output = jax.eval_shape(
        lambda variables, images: _apply(model, variables, images), shapes,
        jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32),
    )
    assert output.shape == (2, 768)


def test_variants_are_consistent():
    assert set(VIT_VARIANTS) == {"mu", "tiny", "small", "base"}
    assert VIT_VARIANTS["tiny"] == {"width": 192, "depth": 12, "num_heads": 3}
    assert VIT_VARIANTS["small"] == {"width": 384, "depth": 12, "num_heads": 6}
    for variant in VIT_VARIANTS.values():
        assert variant["width"] % 4 == 0
        assert variant["width"] % variant["num_heads"] == 0
