"""Per-epoch training history: `history.csv` and the loss / accuracy / Dice plots.

The CSV is rewritten whole (atomically) at every epoch end by the chief, so a crash never
leaves a half-written row; on resume, rows of epochs after the restored checkpoint are
dropped, because those epochs are trained again.
"""

import csv
import os

from core import files
from launch.layout import HISTORY_FILE

COLUMNS = (
    "epoch",
    "step",
    "loss",
    "accuracy",
    "dice",
    "jaccard",
    "val_loss",
    "val_accuracy",
    "val_dice",
    "val_jaccard",
    "learning_rate",
    "images_per_s",
    "seconds",
)
# (file name, metric, y label): the three plots of the original script.
PLOTS = (
    ("loss.png", "loss", "BCE + Dice loss"),
    ("accuracy.png", "accuracy", "pixel accuracy"),
    ("dice.png", "dice", "Dice coefficient"),
)


def read_history(model_dir: str, up_to_epoch: int | None = None) -> list[dict]:
    """Rows of `model_dir/history.csv` as dicts of floats (epoch as int), oldest first.

    Args:
      up_to_epoch: keep only rows with epoch <= this (the epochs a checkpoint covers).
    """
    path = os.path.join(model_dir, HISTORY_FILE)
    if not files.exists(path):
        return []
    with files.open(path, newline="") as f:
        rows = []
        for raw in csv.DictReader(f):
            row = {k: float(v) for k, v in raw.items() if v not in ("", None)}
            row["epoch"] = int(row["epoch"])
            if up_to_epoch is None or row["epoch"] <= up_to_epoch:
                rows.append(row)
    return rows


def write_history(model_dir: str, rows: list[dict]) -> str:
    """Atomically rewrites `history.csv` with `rows`; returns its path."""
    path = os.path.join(model_dir, HISTORY_FILE)
    with files.atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: (f"{row[k]:.6g}" if isinstance(row.get(k), float) else row.get(k, "")) for k in COLUMNS}
            )
    return path


def plot_history(model_dir: str, rows: list[dict]) -> list[str]:
    """Draws loss, accuracy and Dice per epoch (training and validation) as PNGs.

    Each figure is a standalone `Figure` on an Agg canvas: no pyplot, so no global figure
    registry or backend choice is touched.
    """
    # Imported here: matplotlib reads its rc file and font cache from disk when imported.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    paths = []
    epochs = [r["epoch"] for r in rows]
    for name, key, label in PLOTS:
        fig = Figure(figsize=(6, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot(epochs, [r.get(key) for r in rows], "o-", label="training")
        ax.plot(epochs, [r.get("val_" + key) for r in rows], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = os.path.join(model_dir, name)
        with files.atomic_path(path) as tmp:
            fig.savefig(tmp)
        paths.append(path)
    return paths
