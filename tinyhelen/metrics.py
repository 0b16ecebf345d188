"""What a training run reports: the metrics JSONL file, optional wandb/tensorboard, the loss plot, and
the machine's measured matmul peak that MFU is computed against."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from tinyhelen.atomic import append_line, atomic_file, atomic_write_text, read_lines


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

    Each row is appended and fsynced on its own (atomic.append_line), so a run killed at any moment
    leaves every earlier row intact and at most a torn last line, which readers skip. On resume the
    file is cut back to the checkpoint's step (rewritten atomically), so a run killed after its
    last checkpoint does not leave rows that the resumed run will write again."""

    def __init__(self, out_dir: str | Path, resume_step: int | None, wandb_project: str = "",
                 tensorboard: bool = False, run_config: dict | None = None):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            atomic_write_text(self.path, "")
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
        kept = [row for row in read_metrics(self.path) if row.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(row) + "\n" for row in kept))

    def write(self, row: dict) -> None:
        append_line(self.path, json.dumps(row))
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
    """The rows of a metrics.jsonl; a torn last line (a run killed mid-write) is skipped."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no metrics file (a run folder has one once training has logged)")
    rows = []
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not a JSON row ({e.msg}); only the last line of a metrics "
                             f"file can be torn by a crash, so this file was damaged otherwise") from None
    return rows


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
    save_figure(fig, png_path)


def save_figure(fig, png_path: str | Path, dpi: float | None = None) -> None:
    """Write a matplotlib figure as a PNG through atomic_file (a crash leaves the old picture or the
    new one, never half), then close it; the one way every plot in the project is saved."""
    import matplotlib.pyplot as plt
    try:
        with atomic_file(png_path) as f:
            fig.savefig(f, format="png", **({"dpi": dpi} if dpi else {}))
    finally:
        plt.close(fig)
