"""PNG plots: training curves from Lightning's CSV log, cross-attention maps, colour-coded optical flow
(Middlebury colours of `perceiver.adapters.flow.flow_to_color`).

matplotlib runs on the non-interactive Agg backend (no display needed). Every function writes one PNG and returns
its path.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
from torch import Tensor

__all__ = [
    "attention_heatmaps",
    "find_metrics_csv",
    "plot_attention_maps",
    "plot_training_curves",
    "read_metrics",
    "save_flow_comparison",
]


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------------------------------------- training curves
def find_metrics_csv(run_dir: str | Path) -> Path:
    """`RUN_DIR/metrics.csv` or, for Lightning's versioned layout, the newest `metrics.csv` below `run_dir`."""
    path = Path(run_dir)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"run directory {path} does not exist")
    if (path / "metrics.csv").is_file():
        return path / "metrics.csv"
    found = sorted(path.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no metrics.csv under {path}; was it written by a CSVLogger (perceiver fit)?")
    return found[-1]


def read_metrics(csv_path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Columns of a Lightning `metrics.csv` as `{name: (steps, values)}`, skipping empty cells."""
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    with open(csv_path, newline="", encoding="utf-8") as f:
        try:
            for line, row in enumerate(csv.DictReader(f), start=2):
                try:
                    step = float(row.get("step") or "nan")
                except ValueError:
                    raise ValueError(
                        f"{csv_path}: line {line}: expected a number as step, got {row['step']!r}"
                    ) from None
                for key, value in row.items():
                    if key in ("step", "epoch") or value in (None, ""):
                        continue
                    try:
                        series[key].append((step, float(value)))
                    except ValueError:
                        continue
        except UnicodeDecodeError as e:  # a ValueError whose text names no file
            raise ValueError(f"{csv_path}: expected a CSV file (UTF-8 text), got bytes that are not ({e})") from None
    return {k: (np.array([s for s, _ in v]), np.array([x for _, x in v])) for k, v in series.items()}


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def plot_training_curves(run_dir: str | Path, out: str | Path | None = None, title: str | None = None) -> Path:
    """Loss, task metrics and learning rate against optimizer step, from `RUN_DIR/metrics.csv`.

    Panels: losses (per-step training loss, raw and smoothed, and per-epoch validation loss); one panel per task
    metric (`acc`, `epe`, ... for train / val / test, baselines dashed); the learning rate if it was logged.
    Written to `out` (default `RUN_DIR/training_curves.png`).
    """
    plt = _pyplot()
    csv_path = find_metrics_csv(run_dir)
    metrics = read_metrics(csv_path)
    if not metrics:
        raise ValueError(f"{csv_path} holds no metrics yet")
    out = Path(out) if out else csv_path.parent / "training_curves.png"

    def stage_name(key: str) -> tuple[str, str]:
        stage, _, name = key.partition("/")
        return (stage, name) if name else ("", stage)

    groups: dict[str, list[str]] = defaultdict(list)
    for key in sorted(metrics):
        stage, name = stage_name(key)
        if stage == "lr-AdamW" or key.startswith("lr"):
            groups["learning rate"].append(key)
            continue
        base = name.removesuffix("_step").removesuffix("_epoch").removesuffix("_baseline").removesuffix("_zero")
        groups[base].append(key)
    order = ["loss"] + sorted(k for k in groups if k not in ("loss", "learning rate")) + ["learning rate"]
    panels = [k for k in order if k in groups]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for key in groups[panel]:
            steps, values = metrics[key]
            stage, name = stage_name(key)
            if key.endswith("_step"):  # per-step training curve: light raw line + smoothed line
                ax.plot(steps, values, color="tab:blue", alpha=0.25, linewidth=0.8)
                ax.plot(steps, _smooth(values, max(1, len(values) // 30)), color="tab:blue", label=f"{stage} (step)")
            else:
                dashed = name.endswith(("_baseline", "_zero"))
                marker = "o" if len(values) < 40 else None
                ax.plot(steps, values, marker=marker, markersize=3, linestyle="--" if dashed else "-", label=key)
        ax.set_title(panel)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if panel == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        ax.legend(fontsize=8)
    fig.suptitle(title or f"training curves: {csv_path.parent}", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------------------------- attention maps
def attention_heatmaps(attention: Tensor, grid: Sequence[int], latents: Sequence[int] | None = None) -> Tensor:
    """Cross-attention `(B, H, N, M)` over an `M = h * w` grid -> heatmaps `(B, K, h, w)`.

    `K = 1` (mean over heads and latents) when `latents` is None, else one map per chosen latent (mean over heads).
    Each latent's row is a distribution over the `M` inputs, so every map sums to 1.
    """
    b, _, n, m = attention.shape
    h, w = grid
    if h * w != m:
        raise ValueError(f"attention over {m} inputs does not fit a {h}x{w} grid")
    att = attention.float().mean(dim=1)  # (B, N, M)
    maps = att.mean(dim=1, keepdim=True) if latents is None else att[:, list(latents)]
    return maps.reshape(b, -1, h, w)


def select_latents(attention: Tensor, k: int = 3) -> list[int]:
    """The `k` latents whose attention is most concentrated (lowest entropy, mean over batch and heads)."""
    att = attention.float().mean(dim=1).clamp_min(1e-12)  # (B, N, M)
    entropy = -(att * att.log()).sum(-1).mean(0)  # (N,)
    return entropy.argsort()[:k].tolist()


def plot_attention_maps(
    images: Tensor,
    attention: Tensor,
    out: str | Path,
    latents: Sequence[int] | None = None,
    titles: Sequence[str] | None = None,
    suptitle: str | None = None,
) -> Path:
    """One column per image: the image, then heatmaps of the mean attention (heads, latents) and of a few latents.

    images: `(B, h, w)` or `(B, h, w, C)`, any value range (min-max scaled for display); greyscale is drawn as dark
    ink on white. attention: the cross-attention `(B, H, N, h * w)` of one cross-attend, e.g. the first one of
    `model.forward_features(x, return_attention=True)`. `latents`: which latents get their own rows (default: the
    three most concentrated ones). Heatmaps of one row share a colour scale (0 = black, the row's maximum = white)
    and carry the image's outline (cyan) so that attention can be read against the strokes.
    """
    plt = _pyplot()
    images = images.detach().float().cpu()
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    b, h, w = images.shape[:3]
    latents = list(latents) if latents is not None else select_latents(attention)
    heat_rows = [("mean attention\n(heads, latents)", attention_heatmaps(attention, (h, w))[:, 0])]
    per_latent = attention_heatmaps(attention, (h, w), latents)
    heat_rows += [(f"latent {i}", per_latent[:, j]) for j, i in enumerate(latents)]
    fig, axes = plt.subplots(1 + len(heat_rows), b, figsize=(1.6 * b + 0.9, 1.6 * (1 + len(heat_rows)) + 0.4))
    axes = np.asarray(axes).reshape(1 + len(heat_rows), b)
    for col in range(b):
        pixels = images[col]
        img = ((pixels - pixels.min()) / (pixels.max() - pixels.min()).clamp_min(1e-8)).numpy()
        gray = img if img.ndim == 2 else img.mean(-1)
        axes[0][col].imshow(img, cmap="gray_r" if img.ndim == 2 else None, interpolation="nearest")
        if titles is not None:
            axes[0][col].set_title(titles[col], fontsize=8)
        for r, (_, maps) in enumerate(heat_rows, start=1):
            ax = axes[r][col]
            ax.imshow(maps[col].numpy(), cmap="magma", vmin=0.0, vmax=float(maps.max()), interpolation="nearest")
            ax.contour(gray, levels=[0.5], colors="cyan", linewidths=0.8)
    for r, row in enumerate(axes):
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel("input" if r == 0 else heat_rows[r - 1][0], fontsize=8)
    fig.suptitle(suptitle or "first cross-attend: where the latents look", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------------------------- optical flow
def save_flow_comparison(
    frames: Tensor, flow: Tensor | None, pred: Tensor | None, out: str | Path, titles: Sequence[str] | None = None
) -> Path:
    """Rows of `[frame | ground-truth flow | predicted flow]` (one shared speed scale per row); writes a PNG.

    frames: `(B, H, W, 3)` in [0, 1] (the first frame of each pair); flow, pred: `(B, H, W, 2)`. `flow` may be
    None (prediction only, e.g. `perceiver predict` on an image pair).
    """
    from perceiver.adapters.flow import flow_to_color

    plt = _pyplot()
    b = frames.shape[0]
    cols = ["frame 1"] + (["ground truth"] if flow is not None else []) + (["prediction"] if pred is not None else [])
    fig, axes = plt.subplots(b, len(cols), figsize=(3.0 * len(cols), 2.6 * b), squeeze=False)
    for i in range(b):
        fields = [f[i] for f in (flow, pred) if f is not None]
        scale = max(float(f.float().norm(dim=-1).max()) for f in fields) if fields else 1.0
        panels = [frames[i].float().clamp(0, 1).cpu().numpy()] + [
            flow_to_color(f.float().cpu().numpy(), scale) for f in fields
        ]
        for j, (name, panel) in enumerate(zip(cols, panels)):
            ax = axes[i][j]
            ax.imshow(panel)
            ax.set_xticks([])
            ax.set_yticks([])
            label = name
            if name == "prediction" and pred is not None and flow is not None:
                epe = float((pred[i].float() - flow[i].float()).norm(dim=-1).mean())
                label += f" (EPE {epe:.2f})"
            elif name == "ground truth":
                label += f" (max {scale:.1f} px)"
            if i == 0 or name == "prediction":
                ax.set_title(label, fontsize=9)
        if titles is not None:
            axes[i][0].set_ylabel(titles[i], fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
