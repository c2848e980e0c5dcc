"""The builder's image preparation and isic-predict's resize back, as TensorFlow graph ops.

The serving graph (launch/export/serving.py) must give the model the pixels that
`preprocessing.decode.prepare_image` gives it in training and in isic-predict, and
enlarge probabilities as `launch.inference.models.to_original_size` does, with no Python
of ours at serving time. Every function here is the in-graph twin of one of those:

  orientation     encoded bytes -> the EXIF orientation Pillow reports (1..8), int32 []
  decode_small    encoded JPEG/PNG bytes -> uint8 [h, w, 3] RGB, stored orientation; a
                  JPEG decoded at 1/1, 1/2, 1/4 or 1/8 scale exactly as Pillow's `draft`
                  picks it, with the box `draft` returns; 16-bit PNGs brought to 8 bits
                  as Pillow does
  box_resize      uint8 [h, w, 3] -> uint8 [S, S, 3]: Pillow's BOX resize, bit for bit
                  (its fixed-point weights, rounding and order of the two passes)
  upright         [S, S, C] turned by an EXIF orientation (Pillow's transposes)
  shades_of_gray  colour constancy of uint8 [S, S, 3] (`decode.shades_of_gray`)
  bilinear_resize float32 [S, S] -> float32 [H, W]: Pillow's BILINEAR on an "F" image

Pillow's resampling (src/libImaging/Resample.c) gives output pixel i of an axis the
weights filter((j + 0.5 - centre_i) / scale) of the input pixels j within its support,
normalised to sum 1; centre_i = in0 + (i + 0.5) * scale. `_weights` reproduces its
double-precision arithmetic step by step, so the same pixels get the same weights.

Not reproduced (documented in docs/export.md): CMYK JPEGs are converted to RGB by
TensorFlow's rule (which may differ from Pillow's by one level); XMP orientation is read
from JPEGs only (not from PNG iTXt chunks), and ImageMagick's "Raw profile type exif"
PNG text chunk is ignored. Formats other than JPEG and PNG are refused.
"""

import tensorflow as tf

EXIF_ORIENTATION_TAG = 0x0112
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EXIF_HEADER = b"Exif\x00\x00"
_XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
_MAX_IFD_ENTRIES = 1024  # more than any camera writes into IFD0
# Pillow's fixed-point resampling of 8-bit images (PRECISION_BITS = 32 - 8 - 2).
_PRECISION_BITS = 22


def is_jpeg(contents: tf.Tensor) -> tf.Tensor:
    """bool []: the bytes start with a JPEG SOI marker."""
    return tf.equal(tf.strings.substr(contents, 0, 2), b"\xff\xd8")


def is_png(contents: tf.Tensor) -> tf.Tensor:
    """bool []: the bytes start with the PNG signature."""
    return tf.equal(tf.strings.substr(contents, 0, 8), _PNG_SIGNATURE)


def _bytes(contents, pos, length: int | tf.Tensor) -> tf.Tensor:
    """int64 [length]: bytes pos .. pos + length of `contents`, zeros past its end."""
    size = tf.strings.length(contents)
    pos = tf.clip_by_value(tf.cast(pos, tf.int32), 0, size)
    raw = tf.io.decode_raw(tf.strings.substr(contents, pos, length), tf.uint8)
    raw = tf.pad(raw, [[0, tf.maximum(length - tf.size(raw), 0)]])
    if isinstance(length, int):
        raw = tf.ensure_shape(raw, [length])
    return tf.cast(raw, tf.int64)


def _uint(b: tf.Tensor, big_endian) -> tf.Tensor:
    """int64 [...]: unsigned integers from their bytes b [..., k] (k static)."""
    k = b.shape[-1]
    little = tf.constant([256**i for i in range(k)], tf.int64)
    weights = tf.where(big_endian, tf.reverse(little, [0]), little)
    return tf.reduce_sum(b * weights, axis=-1)


def _ifd0_orientation(contents, tiff, tiff_end):
    """(present bool [], value int64 []) of the orientation tag in the TIFF block at byte
    `tiff` of `contents` (an EXIF payload), as Pillow's Exif.load reads it."""
    header = _bytes(contents, tiff, 8)
    little = tf.reduce_all(tf.equal(header[:4], [73, 73, 42, 0]))  # b"II*\0"
    big = tf.reduce_all(tf.equal(header[:4], [77, 77, 0, 42]))  # b"MM\0*"
    ifd = tiff + _uint(header[4:8], big)
    count = tf.minimum(_uint(_bytes(contents, ifd, 2), big), _MAX_IFD_ENTRIES)
    count = tf.where((little | big) & (ifd + 2 <= tiff_end), count, 0)
    entries = tf.reshape(_bytes(contents, ifd + 2, tf.cast(12 * count, tf.int32)), [-1, 12])
    tags, kinds = _uint(entries[:, 0:2], big), _uint(entries[:, 2:4], big)
    counts = _uint(entries[:, 4:8], big)
    short, long = _uint(entries[:, 8:10], big), _uint(entries[:, 8:12], big)
    # SHORT (3) / SSHORT (8) and LONG (4) / SLONG (9) with one value: an int for Pillow;
    # other types or counts give a value that decode.exif_orientation treats as 1.
    value = tf.where((kinds == 3) | (kinds == 8), short, tf.where((kinds == 4) | (kinds == 9), long, 0))
    value = tf.where(counts == 1, value, 0)
    match = tf.equal(tags, EXIF_ORIENTATION_TAG)
    present = tf.reduce_any(match)
    # The last entry wins, as in Pillow's dict of tags.
    last = tf.reduce_max(tf.where(match, tf.range(tf.shape(tags, tf.int64)[0]), -1))
    padded = tf.concat([value, tf.zeros([1], tf.int64)], 0)  # gather stays in range when empty
    return present, tf.where(present, tf.gather(padded, tf.maximum(last, 0)), 0)


def _jpeg_segments(contents):
    """(exif start, exif end, xmp start, xmp end) int64 []: the payloads of the first
    "Exif" APP1 segment and of the last XMP APP1 segment before the scan (-1 if none),
    found by walking the markers as Pillow's JpegImageFile does."""
    size = tf.cast(tf.strings.length(contents), tf.int64)
    minus = tf.constant(-1, tf.int64)

    def body(pos, exif_s, exif_e, xmp_s, xmp_e, done):
        head = _bytes(contents, pos, 4 + len(_XMP_HEADER))
        prefix, marker = head[0] == 0xFF, head[1]
        standalone = prefix & ((marker == 0x01) | ((marker >= 0xD0) & (marker <= 0xD8)))
        stop = prefix & ((marker == 0xDA) | (marker == 0xD9))  # start of scan, end of image
        segment = prefix & (marker != 0xFF) & ~standalone & ~stop  # 2-byte length follows
        length = head[2] * 256 + head[3]
        ident = tf.strings.substr(contents, tf.cast(tf.minimum(pos + 4, size), tf.int32), len(_XMP_HEADER))
        app1 = segment & (marker == 0xE1)
        exif = app1 & tf.equal(tf.strings.substr(ident, 0, len(_EXIF_HEADER)), _EXIF_HEADER) & (exif_s < 0)
        xmp = app1 & tf.equal(ident, _XMP_HEADER)
        exif_s = tf.where(exif, pos + 4 + len(_EXIF_HEADER), exif_s)
        exif_e = tf.where(exif, pos + 2 + length, exif_e)
        xmp_s = tf.where(xmp, pos + 4 + len(_XMP_HEADER), xmp_s)
        xmp_e = tf.where(xmp, pos + 2 + length, xmp_e)
        # A byte that is not 0xFF, or a fill byte 0xFF: move on by one, as Pillow does.
        step = tf.where(segment, 2 + length, tf.where(standalone, tf.constant(2, tf.int64), 1))
        return pos + step, exif_s, exif_e, xmp_s, xmp_e, stop | (pos + step + 4 > size)

    _, exif_s, exif_e, xmp_s, xmp_e, _ = tf.while_loop(
        lambda *state: ~state[-1], body, (tf.constant(2, tf.int64), minus, minus, minus, minus, size < 6)
    )
    return exif_s, exif_e, xmp_s, xmp_e


def _xmp_orientation(contents, start, end):
    """int64 []: the digit after the first `tiff:Orientation="` or `tiff:Orientation>` in
    bytes start..end (Pillow's regular expression), 0 when there is none."""
    xmp = tf.strings.substr(
        contents, tf.cast(tf.maximum(start, 0), tf.int32), tf.cast(tf.maximum(end - start, 0), tf.int32)
    )
    pattern = r'(?s).*?tiff:Orientation(?:="|>)([0-9]).*'
    found = (start >= 0) & tf.strings.regex_full_match(xmp, pattern)
    digit = tf.strings.regex_replace(xmp, pattern, r"\1", replace_global=False)
    digit = tf.strings.substr(digit, 0, 1)
    return tf.where(found, tf.strings.to_number(tf.where(found, digit, "0"), tf.int64), 0)


def _png_exif(contents):
    """(start, end) int64 []: the payload of the first eXIf chunk of a PNG (-1 if none)."""
    size = tf.cast(tf.strings.length(contents), tf.int64)
    minus = tf.constant(-1, tf.int64)

    def body(pos, start, end, done):
        head = _bytes(contents, pos, 8)
        length = _uint(head[:4], True)
        kind = tf.strings.substr(contents, tf.cast(tf.minimum(pos + 4, size), tf.int32), 4)
        exif = tf.equal(kind, b"eXIf") & (start < 0)
        start = tf.where(exif, pos + 8, start)
        end = tf.where(exif, pos + 8 + length, end)
        pos = pos + 12 + length
        return pos, start, end, tf.equal(kind, b"IEND") | (pos + 8 > size)

    _, start, end, _ = tf.while_loop(
        lambda *state: ~state[-1], body, (tf.constant(8, tf.int64), minus, minus, size < 16)
    )
    return start, end


def orientation(contents: tf.Tensor) -> tf.Tensor:
    """int32 [] in 1..8: the EXIF orientation `decode.exif_orientation` finds in the file
    (1 when absent or not one of 2..8); for a JPEG, the XMP tiff:Orientation is used when
    the EXIF has no orientation tag, as Pillow does."""

    def from_jpeg():
        exif_s, exif_e, xmp_s, xmp_e = _jpeg_segments(contents)
        present, value = tf.cond(
            exif_s >= 0,
            lambda: _ifd0_orientation(contents, exif_s, exif_e),
            lambda: (tf.constant(False), tf.constant(0, tf.int64)),
        )
        return tf.where(present, value, _xmp_orientation(contents, xmp_s, xmp_e))

    def from_png():
        start, end = _png_exif(contents)
        return tf.cond(
            start >= 0, lambda: _ifd0_orientation(contents, start, end)[1], lambda: tf.constant(0, tf.int64)
        )

    value = tf.case(
        [(is_jpeg(contents), from_jpeg), (is_png(contents), from_png)],
        default=lambda: tf.constant(0, tf.int64),
    )
    return tf.cast(tf.where((value >= 2) & (value <= 8), value, 1), tf.int32)


def decode_small(contents: tf.Tensor, image_size: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Decodes a JPEG or PNG as `decode.prepare_image` does before its resize.

    Returns:
      (uint8 [h, w, 3] RGB in the stored orientation, DCT-downscaled for a JPEG;
       float32 [2] (height, width) of the region of it that maps onto the original, the
       `box` Pillow's draft returns (h, w for a PNG); int32 [2] the original's stored
       (height, width)).
    Raises (at run time): InvalidArgumentError for other formats or broken files.
    """

    def jpeg():
        shape = tf.image.extract_jpeg_shape(contents)  # [h, w, c] without decoding
        height, width = shape[0], shape[1]
        # Pillow's draft: the largest of 8, 4, 2, 1 not above min(w // S, h // S).
        reduction = tf.minimum(width // image_size, height // image_size)
        branch = tf.where(reduction >= 8, 0, tf.where(reduction >= 4, 1, tf.where(reduction >= 2, 2, 3)))
        decoders = [
            lambda r=r: tf.io.decode_jpeg(contents, channels=3, ratio=r, dct_method="INTEGER_ACCURATE")
            for r in (8, 4, 2, 1)
        ]
        pixels = tf.switch_case(branch, decoders)
        scale = tf.gather([8.0, 4.0, 2.0, 1.0], branch)
        box = tf.cast(tf.stack([height, width]), tf.float32) / scale
        return pixels, box, tf.stack([height, width])

    def png():
        header = _bytes(contents, 24, 2)  # IHDR: bit depth, colour type

        def sixteen_bit():
            wide = tf.io.decode_png(contents, channels=3, dtype=tf.uint16)
            wide = tf.cast(wide, tf.int32)
            # Pillow: 16-bit grayscale -> value // 257 (decode.py), 16-bit colour and
            # grey+alpha -> the high byte (its "RGB;16B" unpackers).
            return tf.cast(tf.where(header[1] == 0, wide // 257, wide // 256), tf.uint8)

        pixels = tf.cond(
            header[0] == 16, sixteen_bit, lambda: tf.io.decode_png(contents, channels=3, dtype=tf.uint8)
        )
        shape = tf.shape(pixels)[:2]
        return pixels, tf.cast(shape, tf.float32), shape

    def refuse():
        check = tf.debugging.Assert(False, ["the image is neither a JPEG nor a PNG"])
        with tf.control_dependencies([check]):
            return tf.zeros([1, 1, 3], tf.uint8), tf.ones([2], tf.float32), tf.ones([2], tf.int32)

    pixels, box, size = tf.case([(is_jpeg(contents), jpeg), (is_png(contents), png)], default=refuse)
    return tf.ensure_shape(pixels, [None, None, 3]), box, size


def _weights(in_size, extent, out_size, kind: str):
    """Pillow's precompute_coeffs for one axis: float64 [out_size, in_size] normalised
    weights (rows of zeros where the support holds no pixel).

    `extent` is the box end in the input's coordinates (the box starts at 0), a float32
    as Pillow stores boxes; kind is "box" (support 0.5) or "bilinear" (support 1).
    """
    support_unit = 0.5 if kind == "box" else 1.0
    scale = tf.cast(tf.cast(extent, tf.float32), tf.float64) / tf.cast(out_size, tf.float64)
    filterscale = tf.maximum(scale, 1.0)
    support = support_unit * filterscale
    centre = (tf.cast(tf.range(out_size), tf.float64) + 0.5) * scale  # [out]
    # C's (int) cast truncates; both values are >= 0 here, so it is a floor.
    xmin = tf.maximum(tf.floor(centre - support + 0.5), 0.0)
    xmax = tf.minimum(tf.floor(centre + support + 0.5), tf.cast(in_size, tf.float64))
    j = tf.cast(tf.range(in_size), tf.float64)[None, :]  # [1, in]
    x = (j - centre[:, None] + 0.5) * (1.0 / filterscale)  # [out, in]
    if kind == "box":
        w = tf.cast((x > -0.5) & (x <= 0.5), tf.float64)
    else:
        w = tf.maximum(1.0 - tf.abs(x), 0.0)
    w = tf.where((j >= xmin[:, None]) & (j < xmax[:, None]), w, 0.0)
    total = tf.reduce_sum(w, axis=1, keepdims=True)
    return tf.where(total != 0.0, w / tf.where(total != 0.0, total, 1.0), 0.0)


def _box_axis(image: tf.Tensor, extent, out_size: int, axis: int) -> tf.Tensor:
    """One pass of Pillow's 8-bit BOX resize along `axis` (0 or 1) of uint8 [h, w, 3].

    The box filter's weights in one output pixel are all 1 / n over a run of n inputs, so
    Pillow's sum 2**21 + sum(value * round(2**22 / n)) is computed from a cumulative sum:
    exact in integers, and linear in the pixels instead of a matmul with S columns.
    """
    in_size = tf.shape(image)[axis]
    w = _weights(in_size, extent, out_size, "box")  # [S, in]
    ones = w > 0.0
    count = tf.reduce_sum(tf.cast(ones, tf.int64), axis=1)  # [S]
    first = tf.argmax(tf.cast(ones, tf.int32), axis=1, output_type=tf.int64)  # [S]
    k = tf.floor(0.5 + tf.reduce_max(w, axis=1) * 2.0**_PRECISION_BITS)  # fixed point
    k = tf.cast(tf.where(count > 0, k, 0.0), tf.int64)
    values = tf.cast(image, tf.int64)
    cumulative = tf.pad(
        tf.cumsum(values, axis=axis), [[1, 0], [0, 0], [0, 0]] if axis == 0 else [[0, 0], [1, 0], [0, 0]]
    )
    sums = tf.gather(cumulative, first + count, axis=axis) - tf.gather(cumulative, first, axis=axis)
    shape = [-1, 1, 1] if axis == 0 else [1, -1, 1]
    total = 2 ** (_PRECISION_BITS - 1) + sums * tf.reshape(k, shape)
    return tf.cast(tf.clip_by_value(total // 2**_PRECISION_BITS, 0, 255), tf.uint8)


def _vertical_first(in_height, in_width, out_height, out_width) -> tf.Tensor:
    """bool []: Pillow (>= 11) resamples the height first when it shrinks more than twice
    as many rows as columns ("to make the horizontal pass faster"); the order matters
    because each pass is stored (rounded to 8 bits, or to float32) before the next."""
    rows, columns = in_height - out_height, in_width - out_width
    return (rows > 0) & (rows > 2 * columns)


def box_resize(image: tf.Tensor, box: tf.Tensor, image_size: int) -> tf.Tensor:
    """uint8 [h, w, 3] -> uint8 [S, S, 3]: `Image.resize((S, S), Image.BOX, box=(0, 0,
    box[1], box[0]))` for an RGB image, pixel for pixel (Pillow's pass order, each pass
    rounded to 8 bits)."""
    shape = tf.shape(image)
    small = tf.cond(
        _vertical_first(shape[0], shape[1], image_size, image_size),
        lambda: _box_axis(_box_axis(image, box[0], image_size, 0), box[1], image_size, 1),
        lambda: _box_axis(_box_axis(image, box[1], image_size, 1), box[0], image_size, 0),
    )
    return tf.ensure_shape(small, [image_size, image_size, 3])


def upright(image: tf.Tensor, orientation_value: tf.Tensor) -> tf.Tensor:
    """[S, S, C] turned as `decode.upright` turns it for EXIF orientation 1..8."""

    def flip_lr():
        return tf.reverse(image, [1])

    def flip_ud():
        return tf.reverse(image, [0])

    def transpose():
        return tf.transpose(image, [1, 0, 2])

    branches = [
        lambda: image,  # 1: upright
        flip_lr,  # 2: FLIP_LEFT_RIGHT
        lambda: tf.reverse(image, [0, 1]),  # 3: ROTATE_180
        flip_ud,  # 4: FLIP_TOP_BOTTOM
        transpose,  # 5: TRANSPOSE
        lambda: tf.reverse(transpose(), [1]),  # 6: ROTATE_270 (clockwise)
        lambda: tf.reverse(transpose(), [0, 1]),  # 7: TRANSVERSE
        lambda: tf.reverse(transpose(), [0]),  # 8: ROTATE_90 (counter-clockwise)
    ]
    return tf.switch_case(orientation_value - 1, branches)


def upright_size(size: tf.Tensor, orientation_value: tf.Tensor) -> tf.Tensor:
    """int32 [2] (height, width) after the orientation (5-8 swap the axes)."""
    return tf.where(orientation_value >= 5, tf.reverse(size, [0]), size)


def shades_of_gray(image: tf.Tensor, p: int) -> tf.Tensor:
    """`decode.shades_of_gray` of uint8 [H, W, 3] (float64, rint, clip)."""
    x = tf.cast(image, tf.float64)
    illuminant = tf.reduce_mean(tf.reshape(x, [-1, 3]) ** p, axis=0) ** (1.0 / p)  # [3]
    grey = tf.sqrt(tf.reduce_mean(illuminant**2))
    positive = illuminant > 0
    gain = tf.where(positive, grey / tf.where(positive, illuminant, 1.0), 1.0)
    corrected = tf.cast(tf.clip_by_value(tf.math.rint(x * gain), 0, 255), tf.uint8)
    return tf.cond(tf.reduce_any(positive), lambda: corrected, lambda: image)


def bilinear_resize(probabilities: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """float32 [S, S] -> [H, W] as Pillow's BILINEAR resize of an "F" image does it
    (`models.to_original_size`): float64 weights and sums, each pass stored as float32,
    in Pillow's pass order."""
    source = tf.shape(probabilities)
    height, width = size[0], size[1]
    across = _weights(source[1], tf.cast(source[1], tf.float32), width, "bilinear")  # [W, S]
    down = _weights(source[0], tf.cast(source[0], tf.float32), height, "bilinear")  # [H, S]

    def horizontal(x):  # [r, S] -> [r, W]
        return tf.cast(tf.matmul(tf.cast(x, tf.float64), across, transpose_b=True), tf.float32)

    def vertical(x):  # [S, c] -> [H, c]
        return tf.cast(tf.matmul(down, tf.cast(x, tf.float64)), tf.float32)

    return tf.cond(
        _vertical_first(source[0], source[1], height, width),
        lambda: horizontal(vertical(probabilities)),
        lambda: vertical(horizontal(probabilities)),
    )
