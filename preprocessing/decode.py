"""Decoding image and mask files: the one place both the builder and inference use.

(Being filled in by the issue-13 refactor: EXIF orientation, modes, 16-bit images.)
"""

# File endings read as images, everywhere in the project.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
