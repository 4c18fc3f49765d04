"""What a training run reports as it goes: metrics.jsonl, progress on stderr and loss.png.

Progress is a bar on a terminal. Where stderr is not one (a log file, CI, a batch job), a bar's
carriage-return frames would pile up on one line, so it is plain lines instead: one per
metrics line (every log_every steps) and one per evaluation. Under torchrun rank 0 alone
reports; the other ranks get a silent RunReport.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm


class RunReport:
    """Averages the applied steps between two metrics lines and writes them out.

    with RunReport(out, active=..., progress=..., plot=..., chars_per_step=..., ...) as report:
        report.step(loss, seconds, applied); report.flush(trainer); report.write({...})
        report.evaluated(trainer, val, saved); report.plot(trainer)
    """

    def __init__(self, out: Path, *, active: bool, progress: bool, plot: bool, chars_per_step: int,
                 per_char: float, total_steps: int | None, first_step: int, desc: str):
        self.out, self.active, self.plots = out, active, plot and active
        self.chars, self.per_char = chars_per_step, per_char
        self.desc, self.total_steps = desc, total_steps
        shown = progress and active
        # A bar on a terminal (or a notebook's widget); plain lines (self.lines) anywhere else.
        self.lines = shown and not _bar_fits(sys.stderr)
        self.bar = tqdm(total=total_steps, initial=first_step, unit="step", dynamic_ncols=True,
                        disable=not shown or self.lines, desc=desc)
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
            tqdm.write(message, file=sys.stderr)

    def _line(self, step: int, text: str) -> None:
        """One plain progress line on stderr (without a terminal's bar)."""
        of = f"/{self.total_steps}" if self.total_steps is not None else ""
        print(f"{self.desc} | step {step}{of} | {text}", file=sys.stderr, flush=True)

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
        if self.lines:
            last_val = "-" if trainer.val_loss is None else f"{trainer.val_loss:.4f}"
            self._line(trainer.step, f"epoch {trainer.epoch} | loss {trainer.train_loss:.4f} | val {last_val} | "
                       f"lr {trainer.optimizer.param_groups[0]['lr']:.3g} | {cps:,.0f} chars/s | "
                       f"{self.elapsed():.1f} s")
        self.bar.set_postfix(loss=f"{trainer.train_loss:.3f}", val=val, cps=f"{cps:,.0f}", epoch=trainer.epoch,
                             refresh=False)
        self.loss = self.seconds = 0.0
        self.applied = 0

    def evaluated(self, trainer, val: float | None, saved: list[str]) -> None:
        """An evaluation and the checkpoints it wrote: a plain line without a terminal (on one,
        the bar's postfix shows the validation loss from the next metrics line on)."""
        if not self.lines:
            return
        loss = "no validation split" if val is None else f"val {val:.4f} (best {trainer.best_val_loss:.4f})"
        self._line(trainer.step, f"epoch {trainer.epoch} | eval: {loss} | saved {', '.join(saved)} | "
                   f"{self.elapsed():.1f} s")

    def plot(self, trainer) -> None:
        """loss.png from the trainer's history."""
        if self.plots:
            c = trainer.cfg
            plot_losses(trainer.history, self.out / "loss.png", title=f"{c.cell} h={c.hidden_size} x{c.num_layers}")


def _bar_fits(stream) -> bool:
    """Whether a progress bar redraws in place: on a terminal, or as tqdm.auto's notebook widget."""
    if any(cls.__module__ == "tqdm.notebook" for cls in tqdm.__mro__):
        return True
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


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
