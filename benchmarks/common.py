"""What the benchmark scripts share: paths, running the CLI as a user does, scoring, the
machine's description and matmul peak, model FLOPs, and regenerating a doc around its kept parts.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from gmvae_cli.metrics import hungarian_accuracy, majority_accuracy

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("GMVAE_DATA", ROOT.parent / "shared" / "data"))
CACHE = ROOT / "bench-cache"
RESULTS = ROOT / "bench-results"


# -- the CLI, run as a subprocess and timed from outside -------------------------------------


class CLIFailed(RuntimeError):
    """A `gmvae` command exited non-zero; the message holds its exit status and stderr's tail."""


def command_line(args: list[str]) -> str:
    """The command as a user would type it (paths relative to the repository root)."""
    return shlex.join(["python", "-m", "gmvae_cli", *args])


def run_cli(args: list[str], capture: bool = False) -> tuple[float, subprocess.CompletedProcess]:
    """Run `python -m gmvae_cli ARGS` from the repository root; (wall seconds, the process).

    With capture, stdout and stderr are kept (stderr is then not a terminal: no progress bar,
    as in any script). Raises CLIFailed on a non-zero exit.
    """
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "gmvae_cli", *args], check=False, env=env,
                          cwd=ROOT, text=True, capture_output=capture)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        tail = (done.stderr or "").strip().splitlines()[-3:] if capture else []
        raise CLIFailed(f"exit {done.returncode}: {command_line(args)}"
                        + ("\n" + "\n".join(tail) if tail else ""))
    return seconds, done


def gmvae(args: list[str]) -> float:
    """Wall seconds of one `gmvae` command, its output left on the terminal."""
    return run_cli(args)[0]


# -- scoring ---------------------------------------------------------------------------------


def score(labels: np.ndarray, clusters: np.ndarray, k: int, n_classes: int) -> dict:
    one_to_one = k == n_classes
    return {
        "accuracy": hungarian_accuracy(labels, clusters) if one_to_one
        else majority_accuracy(labels, clusters),
        "accuracy_protocol": "hungarian" if one_to_one else "majority",
        "majority_accuracy": majority_accuracy(labels, clusters),
        "nmi": normalized_mutual_info_score(labels, clusters),
        "ari": adjusted_rand_score(labels, clusters),
        "non_empty_clusters": len(np.unique(clusters)),
    }


# -- speed: model FLOPs and the machine's matmul peak ---------------------------------------


def model_flops_per_row(payload: dict) -> float:
    """Training FLOPs per row: 2 FLOPs per multiply-add, x3 for forward + backward."""
    cfg = payload["config"]
    macs = {"encoder": 0, "prior": 0, "decoder": 0}
    for name, tensor in payload["state_dict"].items():
        part = name.split(".")[0]
        if name.endswith("weight") and tensor.ndim == 2:
            macs[part] += tensor.shape[0] * tensor.shape[1]
    m = cfg["mc_samples"]
    return 3 * 2 * (macs["encoder"] + m * (macs["prior"] + macs["decoder"]))


def matmul_peak_gflops(size: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


def epoch_rows_per_s(payload: dict, rows: int) -> float | None:
    """Training rows per second over the GMVAE epochs recorded in the checkpoint's history."""
    epochs = [h for h in payload.get("history", []) if "seconds" in h]
    seconds = sum(h["seconds"] for h in epochs)
    return rows * len(epochs) / seconds if epochs and seconds > 0 else None


def machine() -> dict:
    processor = platform.processor() or platform.machine()
    try:  # Linux names the CPU model here; platform.processor() is often empty or just x86_64
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                processor = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "processor": processor, "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def machine_line(m: dict) -> str:
    return (f"{m['cpus']} CPU cores ({m['processor']}), torch {m['torch']}, "
            f"{m['threads']} torch threads")


# -- docs regenerated around their hand-written parts ----------------------------------------

NOTES = "\n## Notes"
# docs/benchmarks.md: `make bench-tables` owns the block between these markers.
TABLES_START, TABLES_END = "<!-- tables:start -->", "<!-- tables:end -->"


def kept_notes(old: str) -> str:
    """The hand-written "## Notes" section (to the end of the file), or ""."""
    return old[old.index(NOTES):] if NOTES in old else ""


def between(text: str, start: str, end: str) -> str:
    """The block from marker `start` to marker `end`, both included, or ""."""
    if start in text and end in text[text.index(start):]:
        i = text.index(start)
        return text[i:text.index(end, i) + len(end)]
    return ""


def replace_block(text: str, start: str, end: str, body: str) -> str:
    """`text` with the block between the markers replaced by `body`; where the markers are not
    there yet, the block goes just above "## Notes" (or at the end)."""
    block = f"{start}\n{body.strip()}\n{end}"
    old = between(text, start, end)
    if old:
        return text.replace(old, block, 1)
    if NOTES in text:
        i = text.index(NOTES)
        return text[:i].rstrip("\n") + "\n\n" + block + "\n" + text[i:]
    return text.rstrip("\n") + "\n\n" + block + "\n"
