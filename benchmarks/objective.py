r"""Benchmarks the BAM loss: forward + backward time and peak memory against the batch size.

Each configuration runs in a fresh subprocess so that its peak resident memory is its own, and
so that the fake-device count (set through XLA_FLAGS before JAX starts) can differ per run.

Run (about 10 minutes on a 2-core machine):
  .venv/bin/python benchmarks/objective.py --batches=256,1024,2048,4096,8192 --devices=1,8

Prints a Markdown table. Time is the median of --repeats timed calls after one warm-up call;
"XLA peak" is the compiled program's buffer assignment (arguments + outputs + temporaries) per
device; "process peak" is the subprocess's maximum resident set size, which includes the Python
and XLA runtime (about 0.4 GiB when idle).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def _measure(args: argparse.Namespace) -> dict:
  """Runs one configuration in this process and returns its measurements."""
  import resource
  import statistics
  import time

  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec

  from bam_jax import objective

  kwargs = dict(num_global_crops=2, temperature=0.1, epsilon=0.05, sinkhorn_iterations=3,
                top_k=args.top_k)
  devices = jax.devices()[:args.num_devices]
  mesh = Mesh(np.array(devices), ("data",))
  sharding = NamedSharding(mesh, PartitionSpec(None, "data", None))
  sharded_loss = objective.make_sharded_bam_loss(mesh, **kwargs)

  rng = np.random.default_rng(0)
  shape = (args.crops, args.batch, args.dim)
  student = jax.device_put(rng.normal(size=shape).astype(np.float32), sharding)
  teacher = jax.device_put(rng.normal(size=shape).astype(np.float32), sharding)

  @jax.jit
  def loss_and_gradient(student, teacher):
    return jax.value_and_grad(lambda s: sharded_loss(s, teacher)[0])(student)

  compile_start = time.perf_counter()
  compiled = loss_and_gradient.lower(student, teacher).compile()
  compile_seconds = time.perf_counter() - compile_start
  memory = compiled.memory_analysis()
  xla_peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes
              + memory.temp_size_in_bytes - memory.alias_size_in_bytes)

  jax.block_until_ready(compiled(student, teacher))
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    loss, _ = compiled(student, teacher)
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - start)
  return {
      "batch": args.batch,
      "devices": args.num_devices,
      "seconds": statistics.median(times),
      "compile_seconds": compile_seconds,
      "xla_peak_gib": xla_peak / 2**30,
      "process_peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
      "loss": float(loss),
  }


def _run_subprocess(batch: int, num_devices: int, args: argparse.Namespace) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  command = [sys.executable, __file__, "--child", f"--batch={batch}",
             f"--num_devices={num_devices}", f"--crops={args.crops}", f"--dim={args.dim}",
             f"--top_k={args.top_k}", f"--repeats={args.repeats}"]
  result = subprocess.run(command, env=env, capture_output=True, text=True)
  if result.returncode != 0:
    tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
    return {"batch": batch, "devices": num_devices, "error": tail[:120]}
  return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batches", default="256,1024,2048,4096,8192",
                      help="comma-separated global batch sizes")
  parser.add_argument("--devices", default="1,8",
                      help="comma-separated device counts (fake CPU devices beyond the real ones)")
  parser.add_argument("--crops", type=int, default=8, help="crops per image (2 global)")
  parser.add_argument("--dim", type=int, default=256, help="projection dimension")
  parser.add_argument("--top_k", type=int, default=128, help="keys kept per target row")
  parser.add_argument("--repeats", type=int, default=3, help="timed calls per configuration")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--num_devices", type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.child:
    print(json.dumps(_measure(args)))
    return

  print(f"crops={args.crops} dim={args.dim} top_k={args.top_k}, forward + backward of the "
        "loss with respect to the student")
  print("| devices | global batch | local batch | time (s) | s per (local x global) 1e6 "
        "| XLA peak per device (GiB) | process peak (GiB) | compile (s) |")
  print("|---|---|---|---|---|---|---|---|")
  for num_devices in [int(d) for d in args.devices.split(",")]:
    for batch in [int(b) for b in args.batches.split(",")]:
      row = _run_subprocess(batch, num_devices, args)
      local = batch // num_devices
      if "error" in row:
        print(f"| {num_devices} | {batch} | {local} | failed: {row['error']} | | | | |")
        continue
      per_unit = row["seconds"] / (local * batch) * 1e6
      print(f"| {num_devices} | {batch} | {local} | {row['seconds']:.3f} | {per_unit:.3f} "
            f"| {row['xla_peak_gib']:.2f} | {row['process_peak_gib']:.2f} "
            f"| {row['compile_seconds']:.1f} |", flush=True)


if __name__ == "__main__":
  main()
