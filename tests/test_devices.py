"""Which device a run takes, and training on a GPU where this machine has one.

The device choice under torchrun is checked everywhere with a GPU count faked; the GPU tests
run `gmvae` in subprocesses that see the GPUs conftest hides from the rest of the suite, and
are skipped on a machine without one (CI)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from conftest import make_blobs_frame
from gmvae_cli import checkpoint, devices
from gmvae_cli.errors import UserError

TORCHRUN = Path(sys.executable).with_name("torchrun")


def torchrun_env(monkeypatch, rank: int, local_world: int) -> None:
    for name, value in (("WORLD_SIZE", local_world), ("RANK", rank), ("LOCAL_RANK", rank),
                        ("LOCAL_WORLD_SIZE", local_world)):
        monkeypatch.setenv(name, str(value))


def fake_gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_auto_takes_the_gpu_for_one_process(monkeypatch):
    fake_gpus(monkeypatch, 1)
    assert devices.resolve("auto") == torch.device("cuda")


@pytest.mark.parametrize("rank", [0, 1])
def test_torchrun_with_fewer_gpus_than_processes(monkeypatch, rank):
    """Two processes on a one-GPU node: auto trains both on the CPU (nccl refuses two ranks
    on one GPU, and a second process would ask for a GPU that is not there); --device cuda
    is refused with what to do, by every rank alike."""
    fake_gpus(monkeypatch, 1)
    torchrun_env(monkeypatch, rank, local_world=2)
    assert devices.resolve("auto") == torch.device("cpu")
    with pytest.raises(UserError) as refused:
        devices.resolve("cuda")
    assert str(refused.value) == (
        "--device cuda needs one GPU per process: torchrun started 2 on this node and 1 GPU(s) "
        "are visible; use --nproc-per-node 1 or --device cpu")


def test_torchrun_with_a_gpu_per_process(monkeypatch):
    fake_gpus(monkeypatch, 2)
    torchrun_env(monkeypatch, 1, local_world=2)
    assert devices.resolve("auto") == torch.device("cuda")
    assert devices.resolve("cuda") == torch.device("cuda")


# -- on a GPU, where there is one -------------------------------------------------------------


def gpu_env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    visible = env.pop("GMVAE_TESTS_VISIBLE_GPUS")  # as it was before conftest hid the GPUs
    if visible == "unset":
        env.pop("CUDA_VISIBLE_DEVICES")
    else:
        env["CUDA_VISIBLE_DEVICES"] = visible
    return env


def count_gpus() -> int:
    if shutil.which("nvidia-smi") is None:  # no driver: no need to start torch to know
        return 0
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                           env=gpu_env(), capture_output=True, text=True, check=False)
    return int(probe.stdout.strip() or 0) if probe.returncode == 0 else 0


GPUS = count_gpus()
needs_gpu = pytest.mark.skipif(GPUS == 0, reason="no CUDA GPU on this machine")


def gmvae(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gmvae_cli", *map(str, args)], cwd=cwd,
                          env=gpu_env(), capture_output=True, text=True, check=False, timeout=300)


@pytest.fixture(scope="module")
def gpu_blobs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu")
    frame, labels = make_blobs_frame(n_rows=2000)
    frame.to_csv(folder / "blobs.csv", index=False)
    return folder, labels


@needs_gpu
@pytest.mark.timeout(600)
def test_default_recipe_on_cuda_repeats_itself_and_assigns_as_the_cpu_does(gpu_blobs):
    """Same seed on the same GPU: the same weights bit for bit. The model assigns the same
    clusters on the GPU as on the CPU, with ELBOs equal to float32 rounding."""
    folder, labels = gpu_blobs
    for name in ("a.pt", "b.pt"):
        done = gmvae("train", "blobs.csv", "--k", 5, "--seed", 3, "--device", "cuda", "-o", name,
                     "--quiet", cwd=folder)
        assert done.returncode == 0, done.stderr
    first, second = (checkpoint.load(str(folder / n))["state_dict"] for n in ("a.pt", "b.pt"))
    assert all(torch.equal(first[name], second[name]) for name in first)
    tables = {}
    for device in ("cuda", "cpu"):
        done = gmvae("assign", "a.pt", "blobs.csv", "--score", "--device", device, cwd=folder)
        assert done.returncode == 0, done.stderr
        tables[device] = pd.read_csv(io.StringIO(done.stdout))
    assert adjusted_rand_score(labels, tables["cuda"]["cluster"]) >= 0.95
    np.testing.assert_array_equal(tables["cuda"]["cluster"], tables["cpu"]["cluster"])
    np.testing.assert_allclose(tables["cuda"]["elbo"], tables["cpu"]["elbo"], rtol=1e-4, atol=1e-4)


def torchrun_train(processes: int, device: str, folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc-per-node", str(processes), "-m", "gmvae_cli",
         "train", "blobs.csv", "--k", "5", "--recipe", "paper", "--hidden", "32,32",
         "--epochs", "5", "--device", device, "-o", f"{device}-{processes}.pt", "--quiet"],
        cwd=folder, env=gpu_env(), capture_output=True, text=True, check=False, timeout=300)


@needs_gpu
@pytest.mark.timeout(600)
def test_torchrun_with_more_processes_than_gpus(gpu_blobs):
    folder, _ = gpu_blobs
    refused = torchrun_train(GPUS + 1, "cuda", folder)
    assert refused.returncode != 0
    assert "error: --device cuda needs one GPU per process" in refused.stderr
    assert not (folder / f"cuda-{GPUS + 1}.pt").exists()
    done = torchrun_train(GPUS + 1, "auto", folder)  # every process on the CPU
    assert done.returncode == 0, done.stderr[-3000:]
    assert (folder / f"auto-{GPUS + 1}.pt").exists()


@pytest.mark.skipif(GPUS < 2, reason="nccl needs two GPUs on this machine")
@pytest.mark.timeout(600)
def test_torchrun_nccl_on_two_gpus(gpu_blobs):
    folder, labels = gpu_blobs
    done = torchrun_train(2, "cuda", folder)
    assert done.returncode == 0, done.stderr[-3000:]
    assigned = gmvae("assign", "cuda-2.pt", "blobs.csv", cwd=folder)
    assert assigned.returncode == 0, assigned.stderr
    clusters = pd.read_csv(io.StringIO(assigned.stdout))["cluster"]
    assert adjusted_rand_score(labels, clusters) >= 0.9
