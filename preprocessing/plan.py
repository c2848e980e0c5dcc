"""What a build will do, decided before any decoding: the inputs, their listing and the
options that determine the output bytes; and the errors a build reports.

build.py makes the plan once and hands it to writer.py; neither imports the other's caller.
"""

import dataclasses

from core.errors import UserError
from preprocessing import pairs as pairs_lib
from preprocessing.config import BuildConfig

# Bump when a change to this package changes the bytes written for the same inputs, so
# that existing outputs are no longer taken as "already built". (2: records name their
# source folder; colour constancy.)
BUILDER_VERSION = 2


class BuildError(UserError):
    """A build that cannot proceed; the message says why and what to do."""


class BadDataError(BuildError):
    """Bad input pairs; `problems` lists them (pairs.Problem)."""

    def __init__(self, problems: list, headline: str | None = None):
        self.problems = list(problems)
        headline = headline or (
            f"{len(self.problems)} bad pair(s); fix or remove them, or pass --skip_bad "
            "to leave them out. Nothing was written."
        )
        super().__init__("\n".join([headline] + ["  " + p.line() for p in self.problems]))


class OutputConflictError(BuildError):
    """The output directory holds a build made with other options or inputs."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a build will read and the options that determine its bytes (no decoding yet).

    options: the manifest's "build" field; equal options mean byte-equal outputs.
    """

    sources: list[pairs_lib.Source]
    listing: pairs_lib.Listing
    options: dict


def plan_build(inputs, config: BuildConfig) -> Plan:
    """Names and lists the input folders [(images_dir, masks_dir), ...] and states the options.

    Raises:
      FileNotFoundError: an input folder is missing.
      UserError: a folder given twice, a folder without pairs, an ID in several folders.
    """
    sources = pairs_lib.name_sources(inputs)
    listing = pairs_lib.discover_sources(sources)
    return Plan(sources, listing, build_options(sources, listing, config))


def build_options(sources: list[pairs_lib.Source], listing: pairs_lib.Listing, config: BuildConfig) -> dict:
    """The manifest's "build" field: what determines the output bytes."""
    return {
        "builder_version": BUILDER_VERSION,
        "image_size": config.image_size,
        "fractions": [float(f) for f in config.fractions],
        "seed": config.seed,
        "num_shards": config.num_shards,
        "skip_bad": config.skip_bad,
        **config.colour.to_dict(),
        "sources": [s.name for s in sources],
        "inputs_sha256": listing.fingerprint,
        "input_files": listing.num_files,
    }
