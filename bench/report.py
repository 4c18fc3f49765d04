"""Every figure a user reads, generated from the current results in bench/results/.

    python bench/report.py            # rewrite the marked blocks of README.md and docs/*.md,
                                      # and the plots docs/speedup.png and docs/loss.png
    python bench/report.py --check    # exit 1 if a block or a plot is not what the results give

A block is the text between `<!-- report: NAME -->` and `<!-- /report -->`; NAME is one of
BLOCKS below. A figure quoted in prose lives in such a block too, so no sentence can disagree
with a table. Each plot carries the digest of the results it was drawn from, which --check
compares (the pixels depend on the matplotlib version; the data must not).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
DOCUMENTS = [ROOT / "README.md", ROOT / "docs" / "benchmarks.md", ROOT / "docs" / "training.md"]
PLOTS = {"speedup": ROOT / "docs" / "speedup.png", "loss": ROOT / "docs" / "loss.png"}
BLOCK = re.compile(r"(<!-- report: ([\w-]+) -->\n)(.*?)(<!-- /report -->)", re.S)


def load(directory: Path = RESULTS) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}


def first(results: dict, prefix: str) -> dict | None:
    """The result named `prefix`, or the first named `prefix-*` (a GPU result per card)."""
    if prefix in results:
        return results[prefix]
    named = sorted(n for n in results if n.startswith(prefix + "-"))
    return results[named[0]] if named else None


# ---------------------------------------------------------------- formatting

def x(ratio) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def ms(value) -> str:
    return "-" if value is None else f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def n(value) -> str:
    return f"{value:,.0f}"


def table(header: list[str], rows: list[list], align: str | None = None) -> str:
    align = align or "---|" + "---:|" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + align]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine(doc: dict) -> str:
    e = doc["env"]
    if e.get("gpu"):
        where = f"{e['gpu']}, torch {e['torch']}, CUDA {e['cuda']}"
        if e.get("cudnn"):
            v = int(e["cudnn"])  # torch reports 9.19.0 as 91900
            where += f", cuDNN {v // 10000}.{v // 100 % 100}.{v % 100}"
        return where
    return f"{e['cpu']}, {e['threads']} threads on {e['cores']} cores, torch {e['torch']}"


def provenance(doc: dict) -> str:
    """Where a table comes from: machine, commit, date and the command that reproduces it."""
    e = doc["env"]
    command = re.sub(r"(--data-dir|--runs-dir) \S+", r"\1 DIR", doc["command"])
    return (f"{machine(doc)}; commit {e.get('commit') or '?'}, {e['date'][:10]}; "
            f"`bench/results/{doc['benchmark']}.json` from\n`{command}`")


def prose(text: str) -> str:
    """A generated sentence, wrapped as the pages' own text is."""
    return textwrap.fill(text, width=96, break_long_words=False, break_on_hyphens=False)


def missing(name: str) -> str:
    return f"*No current result: `bench/results/{name}.json` is missing.*"


# ---------------------------------------------------------------- CPU kernels

def cpu_rows(doc: dict, mode: str = "fwd+bwd") -> list[dict]:
    return [r for r in doc["rows"] if r["mode"] == mode]


def cpu_span(doc: dict) -> tuple[float, float]:
    ratios = [r["speedup_vs_nn_rnn"] for r in cpu_rows(doc)]
    return min(ratios), max(ratios)


def cpu_table(doc: dict, full: bool) -> str:
    rows = []
    for r in doc["rows"] if full else cpu_rows(doc):
        t = r["median_ms"]
        row = [r["H"], r["B"], r["mode"], ms(t["fused"]), ms(t["nn.RNN"]), f"**{x(r['speedup_vs_nn_rnn'])}**",
               n(r["fused_gflops"])]
        if full:
            mem = r["peak_mb_fwd_bwd"]
            row[5] = x(r["speedup_vs_nn_rnn"])
            row += [ms(t["step-loop"]), x(r["speedup_vs_step_loop"]), f"{r['fraction_of_sgemm']:.0%}",
                    f"{mem['fused']:.1f} / {mem['nn.RNN']:.1f}"]
        rows.append(row)
    header = ["H", "B", "mode", "fused ms", "nn.RNN ms", "vs nn.RNN", "GFLOP/s"]
    if full:
        header += ["step loop ms", "vs loop", "of sgemm", "peak MB fused / nn.RNN"]
    return table(header, rows, "---:|---:|---|" + "---:|" * (len(header) - 3))


def block_cpu_table(results):
    doc = results.get("cpu-kernels")
    if doc is None:
        return missing("cpu-kernels")
    T, E = doc["rows"][0]["T"], doc["rows"][0]["E"]
    return prose(f"Forward+backward, float32, T={T}, E={E}; {machine(doc)}.") + "\n\n" + cpu_table(doc, full=False)


def block_cpu_kernels(results):
    doc = results.get("cpu-kernels")
    if doc is None:
        return missing("cpu-kernels")
    c = doc["config"]
    return (cpu_table(doc, full=True) + f"\n\nLarge sgemm (`torch.mm`, 2048³) in the same run: "
            f"{c['sgemm_gflops_before']:.0f} GFLOP/s before the grid, {c['sgemm_gflops_after']:.0f} after. "
            f"{provenance(doc)}")


# ---------------------------------------------------------------- CUDA kernels

def cuda_fused_ms(r: dict) -> float | None:
    """The fused op's time on the path auto picks, forced for the call; the same kernels as the
    'fused' column, timed where the benchmark's order puts them in each round."""
    t = r["median_ms"]
    return t.get("fused:" + r["auto_plan"]["path"], t.get("fused"))


def cuda_ratio(r: dict, name: str) -> float | None:
    fused = cuda_fused_ms(r)
    return None if fused is None else r["median_ms"][name] / fused


def cuda_table(doc: dict, full: bool) -> str:
    rows = []
    for r in doc["rows"]:
        t = r["median_ms"]
        row = [r["T"], r["H"], r["B"], r["auto_plan"]["path"], ms(cuda_fused_ms(r)), ms(t["cuDNN"]),
               f"**{x(cuda_ratio(r, 'cuDNN'))}**", x(cuda_ratio(r, "cuDNN-tf32"))]
        if full:
            row[6] = x(cuda_ratio(r, "cuDNN"))
            row += [ms(t["step-loop"]), x(cuda_ratio(r, "step-loop")),
                    " / ".join(ms(t.get("fused:" + p)) for p in ("block", "cluster", "grid", "steps"))]
        rows.append(row)
    header = ["T", "H", "B", "path", "fused ms", "cuDNN ms", "vs cuDNN", "vs cuDNN TF32"]
    if full:
        header += ["step loop ms", "vs loop", "block / cluster / grid / steps ms"]
    return table(header, rows, "---:|---:|---:|---|" + "---:|" * (len(header) - 4))


def cuda_span(doc: dict, min_h: int = 512) -> tuple[float, float]:
    ratios = [cuda_ratio(r, "cuDNN") for r in doc["rows"] if r["H"] >= min_h and r["auto_plan"]["path"] != "steps"]
    return min(ratios), max(ratios)


def block_cuda_table(results):
    doc = first(results, "cuda-kernels")
    if doc is None:
        return missing("cuda-kernels-CARD")
    return (prose(f"Forward+backward, float32 (TF32 off unless named), E=64; {machine(doc)}.") + "\n\n"
            + cuda_table(doc, False))


def block_cuda_kernels(results):
    docs = [d for name, d in results.items() if name.startswith("cuda-kernels")]
    if not docs:
        return missing("cuda-kernels-CARD")
    return "\n\n".join(cuda_table(d, full=True) + f"\n\n{provenance(d)}" for d in docs)


# ---------------------------------------------------------------- training

def block_headline(results):
    parts = []
    cpu, step, cuda = results.get("cpu-kernels"), results.get("train-step"), first(results, "cuda-kernels")
    if cpu:
        lo, hi = cpu_span(cpu)
        hs = sorted({r["H"] for r in cpu["rows"]})
        parts.append(f"On a {cpu['env']['cores']}-core CPU the fused forward+backward runs {lo:.1f}x to "
                     f"{hi:.1f}x as fast as `torch.nn.RNN` (float32, H = {hs[0]} to {hs[-1]})")
    if step:
        parts.append(f"the default model trains {step['rows'][0]['ratio']:.2f}x as many characters per "
                     "second as the same model written in stock PyTorch")
    if cuda:
        lo, hi = cuda_span(cuda)
        parts.append(f"on an {cuda['env']['gpu'].replace('NVIDIA ', '')} it runs {lo:.1f}x to {hi:.1f}x "
                     "as fast as cuDNN from H = 512 on")
    if not parts:
        return missing("cpu-kernels")
    text = "; ".join(parts)
    return prose(text[0].upper() + text[1:] + ". Every table: [docs/benchmarks.md](docs/benchmarks.md).")


def block_train_step(results):
    doc = results.get("train-step")
    if doc is None:
        return missing("train-step")
    sys.path.insert(0, str(HERE))
    import stock
    return stock.tables(doc["rows"][0]) + f"\n\n{provenance(doc)}"


def default_run(results) -> dict | None:
    doc = results.get("train")
    return None if doc is None else next((r for r in doc["rows"] if r["cell"] == "rnn"), None)


def block_train_result(results):
    r = default_run(results)
    if r is None:
        return missing("train")
    doc = results["train"]
    s = r["sample"]
    return (f"```bash\nTIME_LIMIT=0 bash run.sh --max-steps {r['steps']}\n```\n\n"
            + prose(f"trains {r['steps']:,} steps ({r['epochs']:.1f} epochs) to a validation loss of "
                    f"**{r['val_loss']:.3f}** nats per "
                    f"character (best {r['best_val_loss']:.3f}, train {r['train_loss']:.3f}), and run.sh's "
                    f"sampling command (prime \"{s['prime']}\", temperature {s['temperature']}, seed "
                    f"{s['seed']}) then writes:")
            + f"\n\n```text\n{s['text'].rstrip()}\n```")


def block_train(results):
    doc = results.get("train")
    if doc is None:
        return missing("train")
    out = []
    for r in doc["rows"]:
        evals = [m for m in r["curve"] if "val_loss" in m]
        keep = evals[::max(1, len(evals) // 8)] + ([evals[-1]] if evals and len(evals) % 8 else [])
        rows = [[m["step"], m.get("epoch", "-"), f"{m['val_loss']:.3f}"] for m in keep]
        out.append(f"{r['cell']}: {r['parameters']:,} parameters, {r['steps']:,} steps, "
                   f"{r['epochs']:.1f} epochs, val {r['val_loss']:.3f} "
                   f"(best {r['best_val_loss']:.3f}), train {r['train_loss']:.3f}\n\n"
                   + table(["step", "epoch", "val loss"], rows, "---:|---:|---:|"))
    return "\n\n".join(out) + f"\n\n{provenance(doc)}"


def block_train_cuda(results):
    docs = [d for name, d in results.items() if name.startswith("train-cuda")]
    if not docs:
        return missing("train-cuda-CARD")
    out = []
    for d in docs:
        rows = [[r["cell"], n(r["chars_per_s"]), f"{r['epochs']:.1f}", f"{r['val_loss']:.3f}",
                 f"{r['best_val_loss']:.3f}"] for r in d["rows"]]
        by = {r["cell"]: r for r in d["rows"]}
        ratio = (f"\n\nrnn / rnn-torch characters per second: "
                 f"**{x(by['rnn']['chars_per_s'] / by['rnn-torch']['chars_per_s'])}**"
                 if "rnn" in by and "rnn-torch" in by else "")
        out.append(table(["cell", "chars/s", "epochs", "val loss (final)", "val loss (best)"], rows)
                   + ratio + f"\n\n{provenance(d)}")
    return "\n\n".join(out)


def train_options():
    sys.path.insert(0, str(ROOT))  # from a checkout without installing
    from dataclasses import fields
    from charrnn_ext.train import TrainConfig
    return [f for f in fields(TrainConfig) if f.metadata]


def block_train_flags(results):
    """Every `charrnn train` flag with its default and help, from the options it is built from."""
    rows = []
    for f in train_options():
        choices = f.metadata.get("choices")
        default = "-" if f.default is None else f"`{f.default}`"
        text = f.metadata["help"].replace("|", "\\|")
        if choices and not all(str(c) in text for c in choices):
            text += f" ({', '.join(map(str, choices))})"
        rows.append([f"`--{f.name.replace('_', '-')}`", default, text])
    return table(["flag", "default", ""], rows, "---|---|---|")


def block_default_model(results):
    d = {f.name: f.default for f in train_options()}
    return prose(f"The default model: {d['num_layers']} fused tanh layers of {d['hidden_size']} units, an "
            f"embedding of {d['embedding_size']}, dropout {d['dropout']}, batches of {d['batch_size']} "
            f"windows of {d['seq_len']} characters, {d['optimizer'].capitalize()} at {d['lr']:g} decayed by "
            f"{d['lr_decay']} per epoch, gradient {d['clip_mode']} clipped to {d['grad_clip']:g}.")


# ---------------------------------------------------------------- generation, DDP, dropout

def block_sample(results, name="sample"):
    docs = [d for k, d in results.items() if k == name or (name != "sample" and k.startswith(name + "-"))]
    if not docs:
        return missing(name)
    out = []
    for d in docs:
        names = list(d["rows"][0]["chars_per_s"])
        pairs = [(a, b) for a, b in d["config"].get("ratios", []) if a in names and b in names]
        rows = [[r["samples"], *(n(r["chars_per_s"][k]) for k in names),
                 *(x(r["chars_per_s"][a] / r["chars_per_s"][b]) for a, b in pairs)] for r in d["rows"]]
        out.append(f"Characters per second, medians of {d['config']['rounds']} interleaved rounds.\n\n"
                   + table(["samples", *names, *(f"{a} / {b}" for a, b in pairs)], rows,
                           "---:|" * (1 + len(names) + len(pairs)))
                   + f"\n\n{provenance(d)}")
    return "\n\n".join(out)


def block_sample_cuda(results):
    return block_sample({k: v for k, v in results.items() if k.startswith("sample-cuda")}, "sample-cuda")


def block_ddp(results):
    doc = results.get("ddp")
    if doc is None:
        return missing("ddp")
    rows = [[r["processes"], r["threads_per_process"], n(r["chars_per_s"]),
             n(r["chars_per_s_steady"]) if r.get("chars_per_s_steady") else "-", x(r["vs_first"]),
             f"{r['val_loss']:.3f}", f"{r['wall_s']:.0f}"] for r in doc["rows"]]
    return (table(["processes", "threads each", "chars/s", "steady chars/s", "vs 1 process", "val loss",
                   "wall s"], rows, "---:|" * 7) + f"\n\n{provenance(doc)}")


def block_dropout(results):
    doc = results.get("dropout")
    if doc is None:
        return missing("dropout")
    rows = [[r["measure"], ms(r["none_ms"]), ms(r["fused_ms"]), ms(r["unfused_ms"]), x(r["unfused_over_fused"]),
             r["count"]] for r in doc["rows"]]
    return (table(["", "no dropout ms", "fused ms", "unfused ms", "unfused / fused", "calls or blocks"], rows)
            + f"\n\n{provenance(doc)}")


BLOCKS = {"headline": block_headline, "cpu-table": block_cpu_table, "cpu-kernels": block_cpu_kernels,
          "cuda-table": block_cuda_table, "cuda-kernels": block_cuda_kernels, "train-step": block_train_step,
          "train-result": block_train_result, "train": block_train, "train-cuda": block_train_cuda,
          "sample": block_sample, "sample-cuda": block_sample_cuda, "ddp": block_ddp, "dropout": block_dropout,
          "train-flags": block_train_flags, "default-model": block_default_model}


# ---------------------------------------------------------------- plots

def plot_data(results) -> dict:
    """What each plot shows, and nothing else: its digest is what --check compares."""
    data = {"speedup": {}, "loss": None}
    cpu = results.get("cpu-kernels")
    if cpu:
        data["speedup"]["cpu"] = {"title": f"CPU: {machine(cpu).split(',')[0]}, {cpu['env']['threads']} threads",
                                  "against": "nn.RNN",
                                  "points": [(r["B"], r["H"], r["speedup_vs_nn_rnn"]) for r in cpu_rows(cpu)]}
    cuda = first(results, "cuda-kernels")
    if cuda:
        data["speedup"]["gpu"] = {"title": f"GPU: {cuda['env']['gpu']}", "against": "cuDNN",
                                  "points": [(r["B"], r["H"], cuda_ratio(r, "cuDNN")) for r in cuda["rows"]
                                             if r["T"] == 100]}
    run = default_run(results)
    if run:
        data["loss"] = {"train": [(m["step"], m["train_loss"]) for m in run["curve"] if "train_loss" in m],
                        "val": [(m["step"], m["val_loss"]) for m in run["curve"] if "val_loss" in m]}
    return data


def digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def draw_plots(data: dict) -> None:
    for name, path in PLOTS.items():
        if not (data["speedup"] if name == "speedup" else data["loss"]):
            path.unlink(missing_ok=True)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = data["speedup"]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
        for ax, panel in zip(axes[0], panels.values()):
            for B in sorted({b for b, _, _ in panel["points"]}):
                pts = sorted((h, r) for b, h, r in panel["points"] if b == B)
                ax.plot([h for h, _ in pts], [r for _, r in pts], marker="o", label=f"B = {B}")
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")
            ax.set_xscale("log", base=2)
            hs = sorted({h for _, h, _ in panel["points"]})
            ax.set_xticks(hs, [str(h) for h in hs])
            ax.minorticks_off()
            ax.set_xlabel("hidden size H")
            ax.set_ylabel(f"speed-up over {panel['against']}")
            ax.set_title(panel["title"], fontsize=10)
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        fig.suptitle("Fused forward+backward, float32, T = 100", fontsize=11)
        fig.tight_layout()
        fig.savefig(PLOTS["speedup"], dpi=110, metadata={"Description": digest(panels)})
        plt.close(fig)
    if data["loss"]:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for name, pts in data["loss"].items():
            ax.plot([s for s, _ in pts], [v for _, v in pts], label=name, marker="o" if name == "val" else None,
                    ms=3)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss, nats per character")
        ax.set_title("The default model on tiny shakespeare", fontsize=10)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(PLOTS["loss"], dpi=110, metadata={"Description": digest(data["loss"])})
        plt.close(fig)


def plot_digest(path: Path) -> str | None:
    if not path.exists():
        return None
    from PIL import Image
    with Image.open(path) as im:
        return im.text.get("Description")


# ---------------------------------------------------------------- main

def render(text: str, results: dict) -> str:
    def replace(m):
        name = m.group(2)
        if name not in BLOCKS:
            raise SystemExit(f"report: unknown block {name!r}; known: {', '.join(BLOCKS)}")
        return m.group(1) + BLOCKS[name](results).rstrip() + "\n" + m.group(4)
    return BLOCK.sub(replace, text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 where a block or plot differs")
    p.add_argument("--results", type=Path, default=RESULTS, help="the results to publish (default: %(default)s)")
    args = p.parse_args(argv)
    results = load(args.results)
    stale = []
    for doc in DOCUMENTS:
        text = doc.read_text()
        new = render(text, results)
        if new != text:
            stale.append(str(doc.relative_to(ROOT)))
            if not args.check:
                doc.write_text(new)
    data = plot_data(results)
    for name, path in PLOTS.items():
        shown = data["speedup"] if name == "speedup" else data["loss"]
        wanted = digest(shown) if shown else None
        if plot_digest(path) != wanted:
            stale.append(str(path.relative_to(ROOT)))
    if not args.check:
        draw_plots(data)
    if args.check and stale:
        print("report: out of date with bench/results/: " + ", ".join(stale)
              + "\nrun `python bench/report.py` and commit the result", file=sys.stderr)
        return 1
    print(("report: up to date" if args.check else "report: wrote " + (", ".join(stale) or "nothing new")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
