"""The file names of the input layout (ISIC): `images/<ID>.jpg|.jpeg|.png` and
`masks/<ID>_segmentation.png`. Written once here for the builder, evaluation and
prediction."""

MASK_SUFFIX = "_segmentation.png"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def mask_name(case_id: str) -> str:
    """The mask file name of case `case_id`: `<ID>_segmentation.png`."""
    return case_id + MASK_SUFFIX
