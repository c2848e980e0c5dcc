"""Finds the image/mask pairs of a dataset folder (file names only; nothing is decoded).

Input layout (ISIC): `images/<ID>.jpg|.jpeg|.png` and `masks/<ID>_segmentation.png`,
extensions and the `_segmentation` suffix matched case-insensitively, IDs exactly.

  - Everything else is ignored and counted: hidden files (`.DS_Store`, macOS `._*`
    resource forks), sub-folders, text files (`LICENSE.txt`, `ATTRIBUTION.txt`), the
    `<ID>_superpixels.png` files that ISIC 2017 ships next to its images, and files in
    the masks folder not named `*_segmentation.png`.
  - Problems (reported, never silently dropped): an image without a mask, a mask without
    an image, two images for one ID (e.g. `X.jpg` and `X.png`).
"""

import dataclasses
import hashlib
import os

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MASK_SUFFIX = "_segmentation.png"
_IGNORED_IMAGE_SUFFIXES = ("_superpixels.png",)


@dataclasses.dataclass(frozen=True)
class Pair:
    """One image/mask pair: absolute paths and names relative to their folders."""
    case_id: str
    image_path: str
    mask_path: str

    @property
    def image_file(self) -> str:
        return os.path.basename(self.image_path)

    @property
    def mask_file(self) -> str:
        return os.path.basename(self.mask_path)


@dataclasses.dataclass(frozen=True)
class Problem:
    """A pair that cannot be used: its ID, the file at fault and why."""
    case_id: str
    file: str
    reason: str

    def line(self) -> str:
        return f"{self.file}: {self.reason}"

    def as_dict(self) -> dict:
        return {"id": self.case_id, "file": self.file, "reason": self.reason}


@dataclasses.dataclass
class Listing:
    """What `discover_pairs` found. `pairs` and `problems` are sorted by ID."""
    pairs: list[Pair]
    problems: list[Problem]
    ignored: list[str]          # ignored entries, as 'images/<name>' or 'masks/<name>'
    fingerprint: str            # sha256 of the pair files' names, sizes and mtimes
    num_files: int              # files that took part in the fingerprint


def dataset_dirs(data_dir: str) -> tuple[str, str]:
    """Returns (`data_dir/images`, `data_dir/masks`)."""
    return os.path.join(data_dir, "images"), os.path.join(data_dir, "masks")


def input_dirs(data_dir: str | None, images_dir: str | None,
               masks_dir: str | None) -> tuple[str, str]:
    """Resolves `--data_dir` or `--images_dir` + `--masks_dir` to (images_dir, masks_dir).

    Raises:
      ValueError: both forms given, or neither, or only one of the two folders.
    """
    if data_dir and (images_dir or masks_dir):
        raise ValueError("--data_dir cannot be combined with --images_dir/--masks_dir; pass "
                         "either --data_dir D (reads D/images, D/masks) or both --images_dir "
                         "and --masks_dir")
    if data_dir:
        return dataset_dirs(data_dir)
    if images_dir and masks_dir:
        return images_dir, masks_dir
    if images_dir or masks_dir:
        raise ValueError("--images_dir and --masks_dir must be given together")
    raise ValueError("pass --data_dir D (with D/images and D/masks), or --images_dir and --masks_dir")


def discover_pairs(images_dir: str, masks_dir: str) -> Listing:
    """Lists both folders and matches images with masks by ID.

    Raises:
      FileNotFoundError: a folder does not exist (the message names it).
    """
    images_dir, masks_dir = os.path.abspath(images_dir), os.path.abspath(masks_dir)
    for folder, what in ((images_dir, "images"), (masks_dir, "masks")):
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"{what} folder {folder} does not exist; expected <data_dir>/images and "
                "<data_dir>/masks (or pass --images_dir and --masks_dir)")
    ignored: list[str] = []
    images: dict[str, list[str]] = {}
    for name, path in _files(images_dir, "images", ignored):
        lower = name.lower()
        ext = os.path.splitext(lower)[1]
        if ext not in IMAGE_EXTENSIONS or lower.endswith(_IGNORED_IMAGE_SUFFIXES):
            ignored.append("images/" + name)
            continue
        images.setdefault(name[:-len(ext)], []).append(path)
    masks: dict[str, str] = {}
    for name, path in _files(masks_dir, "masks", ignored):
        if not name.lower().endswith(MASK_SUFFIX):
            ignored.append("masks/" + name)
            continue
        masks[name[:-len(MASK_SUFFIX)]] = path

    pairs, problems = [], []
    for case_id in sorted(set(images) | set(masks)):
        found = sorted(images.get(case_id, []))
        if len(found) > 1:
            problems.append(Problem(case_id, found[1], f"two images for ID {case_id}: "
                                    + ", ".join(os.path.basename(p) for p in found)
                                    + "; keep one"))
        elif not found:
            problems.append(Problem(case_id, masks[case_id],
                                    f"mask without image: no {case_id}.jpg/.jpeg/.png "
                                    f"in {images_dir}"))
        elif case_id not in masks:
            problems.append(Problem(case_id, found[0], "image without mask: expected "
                                    + os.path.join(masks_dir, case_id + MASK_SUFFIX)))
        else:
            pairs.append(Pair(case_id, found[0], masks[case_id]))
    used = ([("images/" + os.path.basename(p), p) for paths in images.values() for p in paths]
            + [("masks/" + os.path.basename(p), p) for p in masks.values()])
    return Listing(pairs, problems, sorted(ignored), _fingerprint(used), len(used))


def _files(folder: str, label: str, ignored: list[str]):
    """Yields (name, absolute path) of the regular, non-hidden files in `folder`.

    Hidden entries and sub-folders are appended to `ignored` instead.
    """
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.startswith(".") or not entry.is_file():
                ignored.append(f"{label}/{entry.name}")
            else:
                yield entry.name, entry.path


def _fingerprint(files: list[tuple[str, str]]) -> str:
    """sha256 over sorted (relative name, size, mtime) of (relative name, path) pairs.

    It changes when a pair file is added, removed, replaced or touched, without reading
    the files; it does not change when the dataset folder is moved (`mv` keeps mtimes).
    """
    digest = hashlib.sha256()
    for name, path in sorted(files):
        st = os.stat(path)
        digest.update(f"{name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()
