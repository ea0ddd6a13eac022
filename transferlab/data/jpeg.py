"""Whether a JPEG that ends with its end marker holds all of its compressed data: a cheap test the scan runs.

A JPEG cut short and given an end marker again (``FFD9`` appended after a cut, as some download and
repair tools leave it) opens and decodes in PIL without an error or a warning: libjpeg fills the
missing blocks with zero coefficients, which decode as flat mid-grey (in a progressive file, as a
blurred or grey rest). libjpeg still counts blocks, though: after the last block of a complete file it
skips whatever bytes come before the end marker, while in a cut file it decodes them as the missing
blocks. So bytes inserted before the end marker change the decoded image exactly when the data was cut.

Cost: one decode at 1/8 scale (libjpeg's DCT scaling: the compressed data is read in full, the inverse
DCT and colour conversion are skipped) for a baseline JPEG, and a second one only when its last block
decodes as mid-grey, as a zeroed block does; progressive JPEGs, whose cut may lie in a refinement scan
that a 1/8-scale decode does not show, are decoded twice at full scale. Not caught: a progressive JPEG
cut exactly between two scans (libjpeg sees a complete, blurrier image), and a cut inside the last block.
"""

import io
import random

from PIL import Image

EOI = b"\xff\xd9"


def _noise(count: int, seed: int) -> bytes:
    """Random bytes without 0xFF, so without a marker."""
    generator = random.Random(seed)
    return bytes(generator.randrange(0xFF) for _ in range(count))


# Noise, then each restart marker RST0..RST7 followed by more noise: a cut file's decoder reads the noise as its
# missing blocks (a file with restart intervals resynchronises on one of the markers); after the last block of a
# complete file, libjpeg skips noise and restart markers alike.
FILLER = _noise(512, 0) + b"".join(bytes([0xFF, 0xD0 + n]) + _noise(512, n + 1) for n in range(8))
ZERO_BLOCK = (128, (128, 128, 128))  # a block of zero coefficients, in L and in RGB


def _decode(data: bytes, progressive: bool) -> Image.Image:
    """``data`` decoded: at full scale when ``progressive``, else at 1/8 scale and luma only."""
    with Image.open(io.BytesIO(data)) as image:
        if not progressive:
            image.draft("L" if image.mode == "RGB" else image.mode, (1, 1))  # the smallest scale: 1/8
        image.load()
    return image  # closing the file keeps the pixels


def cut_short(data: bytes) -> bool:
    """Whether the JPEG ``data``, which ends with ``FFD9``, stops before its image does (see the module)."""
    with Image.open(io.BytesIO(data)) as image:
        progressive = bool(image.info.get("progressive"))
    decoded = _decode(data, progressive)
    last = decoded.getpixel((decoded.width - 1, decoded.height - 1))
    if not progressive and decoded.mode in ("L", "RGB") and last not in ZERO_BLOCK:
        return False  # the last block has data: the data reaches the end
    try:
        return _decode(data[: -len(EOI)] + FILLER + EOI, progressive).tobytes() != decoded.tobytes()
    except OSError:  # the filler was decoded (a complete file skips it), and libjpeg gave up on it
        return True
