"""What a training run reports: the metrics JSONL file, optional wandb/tensorboard, the loss plot, and
the machine's measured matmul peak that MFU is computed against."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch


def measure_peak_flops(device: torch.device, dtype: torch.dtype, size: int = 2048, seconds: float = 1.0) -> float:
    """FLOP/s of a large square matmul on this device and dtype: the practical peak for MFU.

    Measured rather than looked up, because a CPU's real peak depends on its vector units, its
    clock under load and the number of threads torch uses."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b  # warm-up: thread pool start, kernel selection
    sync()
    calls, start = 0, time.perf_counter()
    while True:
        a @ b
        calls += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= 2:
            return 2 * size**3 * calls / elapsed


class MetricsLog:
    """Appends one JSON object per line to OUT_DIR/metrics.jsonl (and to wandb/tensorboard if asked).

    On resume the file is cut back to the checkpoint's step, so a run killed after its last
    checkpoint does not leave rows that the resumed run will write again."""

    def __init__(self, out_dir: str | Path, resume_step: int | None, wandb_project: str = "",
                 tensorboard: bool = False, run_config: dict | None = None):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        else:
            self._truncate_after(resume_step)
        self.wandb = self.tb = None
        if wandb_project:
            try:
                import wandb
            except ImportError:
                raise SystemExit("error: --wandb_project is set but wandb is not installed (pip install wandb)")
            self.wandb = wandb.init(project=wandb_project, config=run_config, dir=str(out_dir))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise SystemExit("error: --tensorboard is set but tensorboard is not installed "
                                 "(pip install tensorboard)")
            self.tb = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"))

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def write(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_losses(metrics_path: str | Path, png_path: str | Path, title: str = "") -> None:
    """Training and validation loss against step, saved as a PNG (written atomically)."""
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", linewidth=1.5, markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title or str(Path(metrics_path).parent))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    tmp = png_path.with_name(png_path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, png_path)
