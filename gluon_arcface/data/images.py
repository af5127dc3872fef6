"""Face images: decoding encoded bytes safely, and resizing as training and verification do.

``decode_image`` turns the JPEG/PNG/BMP bytes found in RecordIO files, .bin files and image
folders into RGB uint8 arrays, refusing other formats and absurd declared sizes before a decoder
allocates memory; ``resize_face`` is the one resize used for training inputs, verification
images and embeddings of photos, so all of them see the same pixels; ``to_network_input`` is the
one scaling of those pixels to what the networks take.
"""
import struct

import cv2
import numpy as np

from ..runtime.errors import ImageDecodeError

__all__ = ['decode_image', 'image_size_of', 'resize_face', 'to_network_input',
           'MAX_IMAGE_PIXELS', 'PIXEL_SCALE']

MAX_IMAGE_PIXELS = 1 << 26  # 67 M pixels (8192 x 8192): larger declared sizes are refused


def image_size_of(buf):
    """``(height, width)`` a JPEG, PNG or BMP declares in its header, or None if not found.

    Read from the header without decoding, so that a huge declared size can be refused before
    a decoder allocates memory for it.
    """
    buf = bytes(buf[:1 << 16]) if len(buf) > 1 << 16 else bytes(buf)
    if buf[:8] == b'\x89PNG\r\n\x1a\n' and len(buf) >= 24 and buf[12:16] == b'IHDR':
        width, height = struct.unpack('>II', buf[16:24])
        return height, width
    if buf[:2] == b'BM' and len(buf) >= 26:
        header = struct.unpack('<I', buf[14:18])[0]
        if header == 12:
            width, height = struct.unpack('<HH', buf[18:22])
        else:
            width, height = struct.unpack('<ii', buf[18:26])
        return abs(height), abs(width)
    if buf[:2] == b'\xff\xd8':
        pos = 2
        while pos + 4 <= len(buf):
            if buf[pos] != 0xFF:
                return None
            marker = buf[pos + 1]
            if marker == 0xFF:  # fill byte
                pos += 1
                continue
            if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length field
                pos += 2
                continue
            if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
                return None
            length = struct.unpack('>H', buf[pos + 2:pos + 4])[0]
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                          0xCF):
                if pos + 9 > len(buf):
                    return None
                height, width = struct.unpack('>HH', buf[pos + 5:pos + 9])
                return height, width
            pos += 2 + length
    return None


_SIGNATURES = (b'\xff\xd8\xff', b'\x89PNG\r\n\x1a\n', b'BM')


def decode_image(buf, path='<image>', record=None):
    """Encoded JPEG/PNG bytes -> RGB uint8 numpy array (H, W, 3); ImageDecodeError if undecodable.

    Face files are encoded from BGR with OpenCV; decoding with OpenCV and converting to RGB
    gives the same pixels as ``mx.image.imdecode``.
    """
    head = bytes(buf[:8])
    if not head.startswith(_SIGNATURES):
        raise ImageDecodeError(path, 'image does not decode: %d bytes starting %r are not a JPEG, '
                               'PNG or BMP' % (len(buf), head[:4]), record=record)
    size = image_size_of(buf)
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise ImageDecodeError(path, 'image declares %dx%d pixels (HxW), more than the %d a '
                               'face image may have; the file is corrupt' % (*size,
                                                                             MAX_IMAGE_PIXELS),
                               record=record)
    img = cv2.imdecode(np.frombuffer(buf, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ImageDecodeError(path, 'image does not decode (%d bytes starting %r); expected a '
                               'JPEG, PNG or BMP' % (len(buf), head[:4]), record=record)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def resize_face(img, image_size):
    """RGB uint8 (H, W, 3) -> (H', W', 3) for ``image_size`` (H', W'): area averaging when it
    shrinks (no aliasing), bilinear when it grows; the image itself when the size matches."""
    height, width = image_size
    if img.shape[:2] == (height, width):
        return img
    shrink = height * width < img.shape[0] * img.shape[1]
    return cv2.resize(np.ascontiguousarray(img), (width, height),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


# Every network of the package takes RGB in [0, 1]: pixel * PIXEL_SCALE, in float32.
PIXEL_SCALE = np.float32(1.0 / 255)


def to_network_input(img, out=None):
    """RGB uint8 (H, W, 3) -> float32 (3, H, W) in [0, 1], C-contiguous (written into ``out``
    when given): the scaling shared by the training loader, verification .bin files and
    embeddings of photos."""
    chw = np.asarray(img).transpose(2, 0, 1)
    if out is None:
        out = np.empty(chw.shape, dtype=np.float32)
    np.multiply(chw, PIXEL_SCALE, out=out)
    return out
