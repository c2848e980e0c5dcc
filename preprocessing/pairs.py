"""Finds the image/mask pairs of the input folders (file names only; nothing is decoded).

Input layout (ISIC): `images/<ID>.jpg|.jpeg|.png` and `masks/<ID>_segmentation.png`,
extensions and the `_segmentation` suffix matched case-insensitively, IDs exactly.

  - Everything else is ignored and counted: hidden files (`.DS_Store`, macOS `._*`
    resource forks), sub-folders, text files (`LICENSE.txt`, `ATTRIBUTION.txt`), the
    `<ID>_superpixels.png` files that ISIC 2017 ships next to its images, and files in
    the masks folder not named `*_segmentation.png`.
  - Problems (reported, never silently dropped): an image without a mask, a mask without
    an image, two images for one ID (e.g. `X.jpg` and `X.png`).

A build may read several input folders (`Source`s); each has a name (`name_sources`:
the data folder's name, made unique) that records and the manifest keep, and an ID may
appear in one folder only.
"""

import dataclasses
import hashlib
import os

from core.errors import InputError
from core.errors import MissingInputError
from core.errors import UserError
from core.names import IMAGE_EXTENSIONS
from core.names import MASK_SUFFIX

_IGNORED_IMAGE_SUFFIXES = ("_superpixels.png",)
_MAX_CLASHES_SHOWN = 20


@dataclasses.dataclass(frozen=True)
class Source:
    """One input folder of a build: its name (recorded in each record) and its folders."""

    name: str
    images_dir: str
    masks_dir: str


@dataclasses.dataclass(frozen=True)
class Pair:
    """One image/mask pair: absolute paths, and the name of its Source."""

    case_id: str
    image_path: str
    mask_path: str
    source: str = ""

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
    """What `discover_pairs` (one folder) or `discover_sources` found; `pairs` and
    `problems` are sorted by ID."""

    pairs: list[Pair]
    problems: list[Problem]
    ignored: list[str]  # ignored entries, as '[<source>/]images/<name>' or ...masks/
    fingerprint: str  # sha256 of the pair files' names, sizes and mtimes
    num_files: int  # files that took part in the fingerprint


def dataset_dirs(data_dir: str) -> tuple[str, str]:
    """Returns (`data_dir/images`, `data_dir/masks`)."""
    return os.path.join(data_dir, "images"), os.path.join(data_dir, "masks")


def input_dirs(data_dirs=(), images_dirs=(), masks_dirs=()) -> list[tuple[str, str]]:
    """Resolves the repeatable `--data_dir`, or `--images_dir` + `--masks_dir` pairs, to a
    list of (images_dir, masks_dir), in the order given.

    The i-th --images_dir goes with the i-th --masks_dir.
    Raises:
      ValueError: both forms given, or neither, or unequal numbers of the two folders.
    """
    data_dirs, images_dirs, masks_dirs = list(data_dirs), list(images_dirs), list(masks_dirs)
    if data_dirs and (images_dirs or masks_dirs):
        raise InputError(
            "--data_dir cannot be combined with --images_dir/--masks_dir; pass "
            "either --data_dir D (reads D/images, D/masks; repeat it for several "
            "folders) or --images_dir and --masks_dir pairs"
        )
    if data_dirs:
        return [dataset_dirs(d) for d in data_dirs]
    if images_dirs and len(images_dirs) == len(masks_dirs):
        return list(zip(images_dirs, masks_dirs))
    if images_dirs or masks_dirs:
        raise InputError(
            "--images_dir and --masks_dir must be given together, one --masks_dir "
            f"per --images_dir in the same order; got {len(images_dirs)} "
            f"--images_dir and {len(masks_dirs)} --masks_dir"
        )
    raise InputError("pass --data_dir D (with D/images and D/masks), or --images_dir and --masks_dir")


def name_sources(dirs) -> list[Source]:
    """Names the input folders [(images_dir, masks_dir), ...] for records and the manifest.

    A folder's name is its data folder's name: for `D/images` that is `D`'s name (the
    --data_dir layout), otherwise the images folder's own. Equal names get as many parent
    folders as it takes to tell them apart (`a/isic` and `b/isic`).
    Raises:
      UserError: the same images folder given twice.
    """
    dirs = [(os.path.abspath(i), os.path.abspath(m)) for i, m in dirs]
    images = [i for i, _ in dirs]
    twice = sorted({i for i in images if images.count(i) > 1})
    if twice:
        raise UserError(f"the images folder {twice[0]} is given twice; give each input folder once")
    roots = [
        (os.path.dirname(i) if os.path.basename(i) == "images" else i).strip(os.sep).split(os.sep)
        for i in images
    ]
    for depth in range(1, max(len(r) for r in roots) + 1):
        names = ["/".join(r[-depth:]) for r in roots]
        if len(set(names)) == len(names):
            break
    else:  # `D` and `D/images` as two images folders: only their full paths differ
        names = images
    return [Source(n, i, m) for n, (i, m) in zip(names, dirs)]


def discover_sources(sources: list[Source]) -> Listing:
    """`discover_pairs` over several input folders, as one listing.

    Pairs and problems are sorted by ID; with several folders, ignored entries are
    prefixed with the folder's name. The fingerprint covers every folder, in order.
    Raises:
      FileNotFoundError: a folder does not exist.
      UserError: a folder without any pair file, or an ID found in more than one folder
        (the message lists them).
    """
    listings = [discover_pairs(s.images_dir, s.masks_dir, s.name) for s in sources]
    for source, listing in zip(sources, listings):
        if not listing.pairs and not listing.problems:
            raise UserError(
                f"no image/mask pairs found: expected <ID>.jpg|.jpeg|.png in "
                f"{source.images_dir} and <ID>_segmentation.png in {source.masks_dir}"
            )
    _check_unique_ids(sources, listings)
    digest = hashlib.sha256()
    for source, listing in zip(sources, listings):
        digest.update(f"{source.name}\t{listing.fingerprint}\n".encode())
    prefix = len(sources) > 1
    return Listing(
        pairs=sorted((p for listing in listings for p in listing.pairs), key=lambda p: p.case_id),
        problems=sorted(
            (p for listing in listings for p in listing.problems), key=lambda p: (p.case_id, p.file)
        ),
        ignored=[
            f"{s.name}/{entry}" if prefix else entry
            for s, listing in zip(sources, listings)
            for entry in listing.ignored
        ],
        fingerprint=digest.hexdigest(),
        num_files=sum(listing.num_files for listing in listings),
    )


def _check_unique_ids(sources: list[Source], listings: list[Listing]) -> None:
    """Raises UserError if an ID (of a pair or a problem) is in more than one folder."""
    where: dict[str, list[str]] = {}
    for source, listing in zip(sources, listings):
        for case_id in sorted({p.case_id for p in listing.pairs + listing.problems}):
            where.setdefault(case_id, []).append(source.name)
    clashes = sorted((i, names) for i, names in where.items() if len(names) > 1)
    if not clashes:
        return
    folders = {s.name: s.images_dir for s in sources}
    lines = [
        f"  {case_id}: in {', '.join(f'{n} ({folders[n]})' for n in names)}"
        for case_id, names in clashes[:_MAX_CLASHES_SHOWN]
    ]
    if len(clashes) > _MAX_CLASHES_SHOWN:
        lines.append(f"  ... and {len(clashes) - _MAX_CLASHES_SHOWN} more")
    raise UserError(
        "\n".join(
            [
                f"{len(clashes)} ID(s) appear in more than one input folder; IDs must be unique "
                "across folders (rename the files, or leave one folder out):"
            ]
            + lines
        )
    )


def discover_pairs(images_dir: str, masks_dir: str, source: str = "") -> Listing:
    """Lists both folders and matches images with masks by ID (the pairs get `source`).

    Raises:
      FileNotFoundError: a folder does not exist (the message names it).
    """
    images_dir, masks_dir = os.path.abspath(images_dir), os.path.abspath(masks_dir)
    for folder, what in ((images_dir, "images"), (masks_dir, "masks")):
        if not os.path.isdir(folder):
            raise MissingInputError(
                f"{what} folder {folder} does not exist; expected <data_dir>/images and "
                "<data_dir>/masks (or pass --images_dir and --masks_dir)"
            )
    ignored: list[str] = []
    images, masks = _list_images(images_dir, ignored), _list_masks(masks_dir, ignored)
    pairs, problems = [], []
    for case_id in sorted(set(images) | set(masks)):
        problem = _pair_problem(case_id, sorted(images.get(case_id, [])), masks, images_dir, masks_dir)
        if problem:
            problems.append(problem)
        else:
            pairs.append(Pair(case_id, images[case_id][0], masks[case_id], source))
    used = [("images/" + os.path.basename(p), p) for paths in images.values() for p in paths] + [
        ("masks/" + os.path.basename(p), p) for p in masks.values()
    ]
    return Listing(pairs, problems, sorted(ignored), _fingerprint(used), len(used))


def _list_images(images_dir: str, ignored: list[str]) -> dict[str, list[str]]:
    """ID -> paths of its image files (more than one is a problem), others to `ignored`."""
    images: dict[str, list[str]] = {}
    for name, path in _files(images_dir, "images", ignored):
        lower = name.lower()
        ext = os.path.splitext(lower)[1]
        if ext not in IMAGE_EXTENSIONS or lower.endswith(_IGNORED_IMAGE_SUFFIXES):
            ignored.append("images/" + name)
            continue
        images.setdefault(name[: -len(ext)], []).append(path)
    return images


def _list_masks(masks_dir: str, ignored: list[str]) -> dict[str, str]:
    """ID -> path of its <ID>_segmentation.png; other files to `ignored`."""
    masks: dict[str, str] = {}
    for name, path in _files(masks_dir, "masks", ignored):
        if not name.lower().endswith(MASK_SUFFIX):
            ignored.append("masks/" + name)
            continue
        masks[name[: -len(MASK_SUFFIX)]] = path
    return masks


def _pair_problem(case_id: str, found: list[str], masks: dict, images_dir: str, masks_dir: str):
    """The Problem of ID `case_id` (its image files `found`, sorted), or None for a pair."""
    if len(found) > 1:
        names = ", ".join(os.path.basename(p) for p in found)
        return Problem(case_id, found[1], f"two images for ID {case_id}: {names}; keep one")
    if not found:
        return Problem(
            case_id, masks[case_id], f"mask without image: no {case_id}.jpg/.jpeg/.png in {images_dir}"
        )
    if case_id not in masks:
        expected = os.path.join(masks_dir, case_id + MASK_SUFFIX)
        return Problem(case_id, found[0], "image without mask: expected " + expected)
    return None


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
