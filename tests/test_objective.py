"""Tests of the BAM objective: reference parity, sharding invariance, numerics and errors."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bam_jax import objective

REFERENCE = pathlib.Path(__file__).parent / "fixtures" / "bam_loss_reference.npz"
CASES = ("distill_topk", "single_no_topk")


def _reference_case(name):
  data = np.load(REFERENCE)
  crops, global_crops, epsilon, temperature, iterations, top_k, teacher_mode = (
      data[f"{name}/params"])
  teacher = data[f"{name}/teacher"] if teacher_mode else None
  kwargs = dict(num_global_crops=int(global_crops), temperature=float(temperature),
                epsilon=float(epsilon), sinkhorn_iterations=int(iterations), top_k=int(top_k))
  assert data[f"{name}/student"].shape[0] == int(crops)
  return data, data[f"{name}/student"], teacher, kwargs


def _random_projections(seed, crops=4, batch=16, dim=8):
  rng = np.random.default_rng(seed)
  student = rng.normal(size=(crops, batch, dim)).astype(np.float32)
  teacher = (student + 0.5 * rng.normal(size=student.shape)).astype(np.float32)
  return student, teacher


def _scaled_sinkhorn_targets(teacher, num_global_crops, epsilon, iterations, dtype):
  """The textbook scaled (not log-domain) Sinkhorn on one device, in numpy."""
  teacher = teacher / np.linalg.norm(teacher, axis=-1, keepdims=True)
  crops, batch, _ = teacher.shape
  keys = teacher[:num_global_crops].reshape(-1, teacher.shape[-1])
  mask = np.arange(batch)[:, None] == (np.arange(keys.shape[0]) % batch)[None]
  with np.errstate(all="ignore"):
    plan = np.exp((teacher @ keys.T / epsilon).astype(dtype)) * ~mask
    plan = plan / plan.sum()
    for _ in range(iterations):
      plan = plan / plan.sum(axis=(0, 1)) / (keys.shape[0] - num_global_crops)
      plan = plan / plan.sum(axis=-1, keepdims=True) / (crops * batch)
    plan = plan / plan.sum(axis=-1, keepdims=True)
  return plan[:num_global_crops]


@pytest.fixture(scope="module")
def eight_devices():
  devices = jax.devices()
  assert len(devices) >= 8, (
      "these tests need 8 devices; run them with "
      "XLA_FLAGS=--xla_force_host_platform_device_count=8 (as `make test` does)")
  return devices[:8]


@pytest.mark.parametrize("name", CASES)
def test_loss_matches_reference(name):
  data, student, teacher, kwargs = _reference_case(name)
  loss = objective.bam_loss(student, teacher, **kwargs)
  np.testing.assert_allclose(loss, data[f"{name}/loss"], rtol=1e-5)


@pytest.mark.parametrize("name", CASES)
def test_gradient_matches_reference(name):
  data, student, teacher, kwargs = _reference_case(name)
  gradient = jax.grad(lambda s: objective.bam_loss(s, teacher, **kwargs))(student)
  np.testing.assert_allclose(gradient, data[f"{name}/grad_student"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", CASES)
def test_targets_match_reference(name):
  data, student, teacher, kwargs = _reference_case(name)
  kwargs.pop("temperature")
  targets = objective.balanced_targets(student if teacher is None else teacher, **kwargs)
  np.testing.assert_allclose(targets, data[f"{name}/targets"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("teacher_mode", [True, False])
def test_sharding_does_not_change_loss(eight_devices, teacher_mode):
  student, teacher = _random_projections(seed=0)
  teacher = teacher if teacher_mode else None
  kwargs = dict(num_global_crops=2, temperature=0.1, epsilon=0.05, sinkhorn_iterations=3,
                top_k=5)
  expected_loss, expected_gradient = jax.value_and_grad(
      lambda s: objective.bam_loss(s, teacher, **kwargs))(student)
  _, expected_diagnostics = objective.bam_loss_with_diagnostics(student, teacher, **kwargs)

  for num_devices in (1, 2, 4, 8):
    mesh = Mesh(np.array(eight_devices[:num_devices]), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec(None, "data", None))
    sharded_loss = objective.make_sharded_bam_loss(mesh, **kwargs)
    student_global = jax.device_put(student, sharding)
    teacher_global = None if teacher is None else jax.device_put(teacher, sharding)

    @jax.jit
    def loss_and_gradient(s, t):
      (loss, diagnostics), gradient = jax.value_and_grad(
          lambda s: sharded_loss(s, t), has_aux=True)(s)
      return loss, diagnostics, gradient

    loss, diagnostics, gradient = loss_and_gradient(student_global, teacher_global)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-6, err_msg=f"{num_devices} devices")
    np.testing.assert_allclose(gradient, expected_gradient, atol=1e-7, rtol=1e-5,
                               err_msg=f"{num_devices} devices")
    for key in objective.DIAGNOSTIC_NAMES:
      np.testing.assert_allclose(diagnostics[key], expected_diagnostics[key], rtol=1e-5,
                                 atol=1e-7, err_msg=f"{key} on {num_devices} devices")


def test_sharded_targets_match_unsharded(eight_devices):
  _, teacher = _random_projections(seed=1)
  expected = objective.balanced_targets(teacher, top_k=7)
  mesh = Mesh(np.array(eight_devices), ("data",))
  sharded_targets = jax.jit(jax.shard_map(
      lambda t: objective.balanced_targets(t, top_k=7, axis_name="data"), mesh=mesh,
      in_specs=PartitionSpec(None, "data", None), out_specs=PartitionSpec(None, "data", None)))
  np.testing.assert_allclose(sharded_targets(teacher), expected, atol=1e-6)


def test_sharded_memory_is_per_device(eight_devices):
  # The sharded program may hold [V, b, G*B] similarities per device but never [V, B, G*B].
  crops, batch, dim = 4, 64, 8
  mesh = Mesh(np.array(eight_devices), ("data",))
  sharded_loss = objective.make_sharded_bam_loss(mesh, top_k=4)
  abstract = jax.ShapeDtypeStruct(
      (crops, batch, dim), jnp.float32,
      sharding=NamedSharding(mesh, PartitionSpec(None, "data", None)))
  hlo = jax.jit(jax.grad(lambda s, t: sharded_loss(s, t)[0])).lower(
      abstract, abstract).compile().as_text()
  local_shape = f"f32[{crops},{batch // 8},{2 * batch}]"
  global_shape = f"f32[{crops},{batch},{2 * batch}]"
  assert local_shape in hlo
  assert global_shape not in hlo


def test_bfloat16_close_to_float32():
  student, teacher = _random_projections(seed=2, batch=32, dim=16)
  loss_32 = objective.bam_loss(student, teacher, top_k=8)
  loss_16 = objective.bam_loss(student.astype(jnp.bfloat16), teacher.astype(jnp.bfloat16),
                               top_k=8)
  assert loss_16.dtype == jnp.float32
  assert np.isfinite(loss_16)
  np.testing.assert_allclose(loss_16, loss_32, rtol=2e-2)


def test_small_epsilon_stays_finite():
  student, teacher = _random_projections(seed=3, batch=32, dim=16)
  targets = objective.balanced_targets(teacher, epsilon=0.005)
  loss = objective.bam_loss(student, teacher, epsilon=0.005)
  assert np.all(np.isfinite(targets))
  np.testing.assert_allclose(np.sum(targets, axis=-1), 1.0, atol=1e-5)
  assert np.isfinite(loss)
  # The scaled form that the log domain replaces breaks down at this epsilon in float32.
  scaled = _scaled_sinkhorn_targets(teacher, 2, 0.005, 3, np.float32)
  assert not np.all(np.isfinite(scaled))


def test_log_domain_matches_scaled_form():
  _, teacher = _random_projections(seed=4)
  expected = _scaled_sinkhorn_targets(teacher.astype(np.float64), 2, 0.05, 3, np.float64)
  targets = objective.balanced_targets(teacher)
  np.testing.assert_allclose(targets, expected, atol=1e-6)


def test_target_rows_sum_to_one():
  _, teacher = _random_projections(seed=5)
  for top_k in (0, 3):
    targets = objective.balanced_targets(teacher, top_k=top_k)
    np.testing.assert_allclose(np.sum(targets, axis=-1), 1.0, atol=1e-6)


def test_many_iterations_balance_columns():
  student, teacher = _random_projections(seed=6)
  few = objective.bam_loss_with_diagnostics(student, teacher, sinkhorn_iterations=1)[1]
  many = objective.bam_loss_with_diagnostics(student, teacher, sinkhorn_iterations=500)[1]
  assert many["sinkhorn_marginal_error"] < 1e-4
  assert few["sinkhorn_marginal_error"] > 10 * many["sinkhorn_marginal_error"]


def test_top_k_of_all_unmasked_keys_is_off():
  student, teacher = _random_projections(seed=7)
  unmasked = 2 * student.shape[1] - 2
  np.testing.assert_allclose(
      objective.balanced_targets(teacher, top_k=unmasked), objective.balanced_targets(teacher),
      atol=1e-6)
  np.testing.assert_allclose(
      objective.bam_loss(student, teacher, top_k=unmasked), objective.bam_loss(student, teacher),
      rtol=1e-6)


def test_top_k_keeps_k_keys_per_row():
  _, teacher = _random_projections(seed=8)
  targets = objective.balanced_targets(teacher, top_k=5)
  assert np.all(np.sum(targets > 0, axis=-1) == 5)
  # Both global crops of an image keep the same keys.
  np.testing.assert_array_equal(targets[0] > 0, targets[1] > 0)


def test_masked_entries_are_zero():
  _, teacher = _random_projections(seed=9)
  batch = teacher.shape[1]
  targets = np.asarray(objective.balanced_targets(teacher))
  for image in range(batch):
    for crop in range(2):
      assert targets[:, image, crop * batch + image].tolist() == [0.0, 0.0]
  assert np.all(targets[:, 0, 1:batch] > 0)


def test_diagnostics_are_in_range():
  student, teacher = _random_projections(seed=10)
  _, diagnostics = objective.bam_loss_with_diagnostics(student, teacher, top_k=5)
  assert set(diagnostics) == set(objective.DIAGNOSTIC_NAMES)
  assert 0 <= diagnostics["sinkhorn_marginal_error"] <= 1
  max_entropy = np.log(2 * student.shape[1] - 2)
  assert 0 < diagnostics["target_entropy"] <= np.log(5) + 1e-6
  assert 0 < diagnostics["source_entropy"] <= max_entropy + 1e-6
  assert 0 < diagnostics["top_k_mass"] < 1
  _, no_top_k = objective.bam_loss_with_diagnostics(student, teacher)
  np.testing.assert_allclose(no_top_k["top_k_mass"], 1.0)


def test_one_compilation_per_shape():
  traces = []

  @jax.jit
  def loss(s, t):
    traces.append(s.shape)
    return objective.bam_loss(s, t, top_k=4)

  for seed in range(3):
    loss(*_random_projections(seed))
  loss(*_random_projections(0, batch=8))
  assert traces == [(4, 16, 8), (4, 8, 8)]


@pytest.mark.parametrize("kwargs, student_shape, teacher_shape, message", [
    (dict(), (1, 8, 4), (1, 8, 4), "at least 2 crops"),
    (dict(num_global_crops=5), (4, 8, 4), (4, 8, 4), "num_global_crops=5"),
    (dict(), (4, 8, 4), (4, 8, 5), "does not match student shape"),
    (dict(top_k=15), (4, 8, 4), (4, 8, 4), "top_k=15"),
    (dict(epsilon=0.0), (4, 8, 4), (4, 8, 4), "epsilon must be positive, got 0.0"),
    (dict(temperature=-0.1), (4, 8, 4), (4, 8, 4), "temperature must be positive, got -0.1"),
    (dict(), (4, 1, 4), (4, 1, 4), "at least 2"),
])
def test_invalid_arguments_raise(kwargs, student_shape, teacher_shape, message):
  with pytest.raises(ValueError, match=message):
    objective.bam_loss(jnp.ones(student_shape), jnp.ones(teacher_shape), **kwargs)


def test_indivisible_batch_raises(eight_devices):
  mesh = Mesh(np.array(eight_devices), ("data",))
  sharded_loss = objective.make_sharded_bam_loss(mesh)
  with pytest.raises(ValueError, match="divisible by the 8 devices"):
    sharded_loss(jnp.ones((4, 12, 8)), jnp.ones((4, 12, 8)))


def test_unknown_mesh_axis_raises(eight_devices):
  mesh = Mesh(np.array(eight_devices), ("data",))
  with pytest.raises(ValueError, match="'batch' is not an axis"):
    objective.make_sharded_bam_loss(mesh, axis_name="batch")
