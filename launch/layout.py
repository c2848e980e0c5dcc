"""The model directory's layout: every file name in it, and what `--model` may name.

    M/config.json             every option of the run (isic-train)
    M/checkpoints/ckpt-N.*    model, optimizer, global step; M/checkpoints/run.json: the
                              settings a resumed run must match
    M/history.csv, M/{loss,accuracy,dice}.png, M/logs/ (TensorBoard)
    M/preprocessing.json      the records' colour constancy (applied by evaluate/predict)
    M/ISIC-UNet.keras         the final model; M/best/ISIC-UNet.keras the best by val Dice
    M/saved_model/            the final model for TF Serving
    M/.isic-train.lock        held by the run that trains in M

Training writes it, inference and export read it; this module is the one place that
names the files, so it imports neither TensorFlow nor Keras (core/files.py loads
TensorFlow's gfile only for a remote path such as gs://).
"""

import os

from core import files
from core.errors import MissingInputError

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
RUN_FILE = "run.json"  # inside CHECKPOINT_DIR
HISTORY_FILE = "history.csv"
LOG_DIR = "logs"
PREPROCESSING_FILE = "preprocessing.json"
MODEL_FILE = "ISIC-UNet.keras"
BEST_DIR = "best"
SAVED_MODEL_DIR = "saved_model"
LOCK_FILE = ".isic-train.lock"

# The help of every command's --model flag.
MODEL_HELP = (
    f"A model directory from isic-train (uses its {MODEL_FILE}; pass runs/unet/{BEST_DIR} "
    "for the best-by-validation model) or a .keras file."
)


def resolve_model_path(path: str) -> str:
    """Returns the .keras file meant by `path` (a model directory or a .keras file).

    Raises:
      MissingInputError: nothing usable at `path`; the message says what to pass instead.
    """
    if files.isdir(path):
        candidate = os.path.join(path, MODEL_FILE)
        if files.isfile(candidate):
            return candidate
        if files.isfile(os.path.join(path, "saved_model.pb")):
            parent = os.path.dirname(files.absolute(path).rstrip("/"))
            beside = (
                f"pass {parent} (its model directory) or {os.path.join(parent, MODEL_FILE)}"
                if files.isfile(os.path.join(parent, MODEL_FILE))
                else f"pass a model directory from isic-train or its {MODEL_FILE}"
            )
            raise MissingInputError(
                f"--model {path} is a TensorFlow SavedModel (for TF Serving or "
                f"tf.saved_model.load); isic-evaluate and isic-predict need the Keras model: {beside}"
            )
        hint = (
            f" (it has {BEST_DIR}/{MODEL_FILE}: pass --model {os.path.join(path, BEST_DIR)})"
            if files.isfile(os.path.join(path, BEST_DIR, MODEL_FILE))
            else ""
        )
        raise MissingInputError(
            f"model directory {path} has no {MODEL_FILE}{hint}. isic-train writes it when "
            f"training ends; pass a finished model directory or a .keras file to --model"
        )
    if files.isfile(path):
        if path.endswith((".h5", ".hdf5")):
            raise MissingInputError(
                f"--model {path} is a Keras HDF5 (.h5) file, a format these commands do not "
                "read; pass a model directory from isic-train or a .keras file (convert with "
                "keras.models.load_model(path).save('model.keras'))"
            )
        if not path.endswith(".keras"):
            raise MissingInputError(
                f"--model {path} is not a .keras file; pass a model "
                f"directory from isic-train or its {MODEL_FILE}"
            )
        return path
    raise MissingInputError(
        f"model {path} does not exist; pass a model directory from "
        f"isic-train (e.g. runs/unet or runs/unet/{BEST_DIR}) or a .keras file"
    )


def preprocessing_candidates(model_path: str) -> tuple[str, str]:
    """Where the preprocessing record of the model `model_path` resolves to may be: next to
    its .keras file, then in that folder's parent (M/best/ISIC-UNet.keras -> M/...)."""
    folder = os.path.dirname(files.absolute(resolve_model_path(model_path)))
    return (
        os.path.join(folder, PREPROCESSING_FILE),
        os.path.join(os.path.dirname(folder), PREPROCESSING_FILE),
    )
