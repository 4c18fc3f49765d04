"""What a training run reports as it goes: metrics.jsonl, the progress bar and loss.png.

Under torchrun rank 0 alone reports; the other ranks get a silent RunReport.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tqdm.auto import tqdm


class RunReport:
    """Averages the applied steps between two metrics lines and writes them out.

    with RunReport(out, active=..., progress=..., plot=..., chars_per_step=..., ...) as report:
        report.step(loss, seconds, applied); report.flush(trainer); report.write({...}); report.plot(trainer)
    """

    def __init__(self, out: Path, *, active: bool, progress: bool, plot: bool, chars_per_step: int,
                 per_char: float, total_steps: int | None, first_step: int, desc: str):
        self.out, self.active, self.plots = out, active, plot and active
        self.chars, self.per_char = chars_per_step, per_char
        self.bar = tqdm(total=total_steps, initial=first_step, unit="step", dynamic_ncols=True,
                        disable=not (progress and active), desc=desc)
        self.start = time.monotonic()
        self.loss = self.seconds = 0.0
        self.applied = 0  # since the last metrics line
        self.steps, self.train_seconds = 0, 0.0  # all of this run's steps, applied or not
        self.metrics = None

    def __enter__(self):
        if self.active:
            self.out.mkdir(parents=True, exist_ok=True)
            self.metrics = open(self.out / "metrics.jsonl", "a")
        return self

    def __exit__(self, *exc):
        self.bar.close()
        if self.metrics is not None:
            self.metrics.close()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def write(self, record: dict) -> None:
        if self.metrics is not None:
            self.metrics.write(json.dumps(record) + "\n")
            self.metrics.flush()

    def say(self, message: str) -> None:
        if self.active:
            tqdm.write(message)

    def chars_per_s(self) -> float:
        """Training characters per second of this run (optimizer steps only)."""
        return self.steps * self.chars / self.train_seconds if self.train_seconds > 0 else 0.0

    def step(self, loss: float, seconds: float, applied: bool) -> None:
        self.bar.update(1)
        self.steps += 1
        self.train_seconds += seconds
        if applied:
            self.loss += loss / self.per_char
            self.seconds += seconds
            self.applied += 1

    def flush(self, trainer) -> None:
        """A metrics line for the steps since the last one: their mean loss becomes the
        trainer's train_loss and joins its history."""
        if not self.applied:
            return
        trainer.train_loss = self.loss / self.applied
        cps = self.applied * self.chars / self.seconds if self.seconds > 0 else 0.0
        trainer.history["step"].append(trainer.step)
        trainer.history["train_loss"].append(trainer.train_loss)
        self.write({"step": trainer.step, "epoch": trainer.epoch, "train_loss": trainer.train_loss,
                    "lr": trainer.optimizer.param_groups[0]["lr"], "chars_per_s": cps, "elapsed_s": self.elapsed()})
        val = "-" if trainer.val_loss is None else f"{trainer.val_loss:.3f}"
        self.bar.set_postfix(loss=f"{trainer.train_loss:.3f}", val=val, cps=f"{cps:,.0f}", epoch=trainer.epoch,
                             refresh=False)
        self.loss = self.seconds = 0.0
        self.applied = 0

    def plot(self, trainer) -> None:
        """loss.png from the trainer's history."""
        if self.plots:
            c = trainer.cfg
            plot_losses(trainer.history, self.out / "loss.png", title=f"{c.cell} h={c.hidden_size} x{c.num_layers}")


def plot_losses(history: dict, path: str | os.PathLike, title: str = "") -> None:
    # The object API, not pyplot: no global backend switch, safe without a display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if history["step"]:
        ax.plot(history["step"], history["train_loss"], label="train", lw=1)
    if history["val_step"]:
        ax.plot(history["val_step"], history["val_loss"], "o-", label="validation", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / char)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = Path(path).with_name(f".{Path(path).name}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)
