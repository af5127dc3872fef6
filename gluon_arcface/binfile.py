"""Verification ``.bin`` files (lfw.bin, cfp_fp.bin, agedb_30.bin, lfw_small.bin, ...).

A .bin is a pickle of ``(bins, issame_list)``: 2N encoded images (pair i = images 2i and 2i+1)
and N booleans. Images may be Python-2 ``str`` (read back as bytes), ``bytes``/``bytearray``, or
numpy uint8 arrays of shape (n,) or (n, 1) as ``cv2.imencode`` returns them. Python-2 pickles are
read with ``encoding='latin1'`` and their str images turned back into the original bytes.

Pickles can run code when loaded. The unpickler here resolves only the few globals those files
need (numpy array reconstruction, ``_codecs.encode`` used for bytes in protocol 2); anything else
is refused with ``UnsafePickleError`` before it is called.
"""
import io
import os
import pickle

import cv2
import numpy as np
from mxnet import np as mnp

from .errors import FaceDataError, ImageDecodeError, UnsafePickleError

__all__ = ['load_bin', 'read_bin', 'write_bin', 'decode_image']

_ALLOWED_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'),
    ('numpy._core.multiarray', '_reconstruct'),  # pickles written by numpy 2
    ('numpy.core.multiarray', 'scalar'),
    ('numpy._core.multiarray', 'scalar'),
    ('numpy', 'ndarray'),
    ('numpy', 'dtype'),
    ('numpy', 'bool_'),
    ('_codecs', 'encode'),
    ('__builtin__', 'bool'),  # Python 2 names, mapped by fix_imports
    ('builtins', 'bool'),
    ('builtins', 'bytearray'),
    ('__builtin__', 'bytearray'),
}


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, f, path):
        # latin1 maps Python-2 str one-to-one onto code points, so the original bytes come back
        # with .encode('latin1'); it is also what numpy needs for Python-2 array pickles.
        super().__init__(f, encoding='latin1')
        self._path = path

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafePickleError(self._path, 'refusing to load %s.%s: a verification .bin may '
                                    'only hold encoded images (bytes or uint8 arrays) and '
                                    'booleans' % (module, name))
        if module.startswith('numpy._core'):
            module = module.replace('numpy._core', 'numpy.core')
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise UnsafePickleError(self._path, 'refusing persistent id %r' % (pid,))


def _as_image_bytes(obj, path, index):
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj)
    if isinstance(obj, str):  # a Python-2 str
        try:
            return obj.encode('latin1')
        except UnicodeEncodeError:
            pass
    if isinstance(obj, np.ndarray) and obj.dtype == np.uint8 and (
            obj.ndim == 1 or (obj.ndim == 2 and 1 in obj.shape)):
        return obj.tobytes()
    raise FaceDataError(path, 'expected an encoded image (bytes or a uint8 array of shape (n,) '
                        'or (n, 1)), got %s' % _describe(obj), record=index)


def _describe(obj):
    if isinstance(obj, np.ndarray):
        return 'a %s array of shape %s' % (obj.dtype, obj.shape)
    return type(obj).__name__


def read_bin(path):
    """Unpickle a .bin safely -> ``(list of encoded image bytes, bool numpy array)``."""
    path = os.fspath(path)
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except FileNotFoundError:
        raise FaceDataError(path, 'verification .bin not found') from None
    try:
        obj = _SafeUnpickler(io.BytesIO(data), path).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a malformed file
        raise FaceDataError(path, 'not a readable verification .bin (a pickle of (images, '
                            'issame_list)): %s: %s' % (type(e).__name__, e)) from None
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise FaceDataError(path, 'expected a pickled pair (images, issame_list), got %s'
                            % _describe(obj))
    bins, issame = obj
    if not isinstance(bins, (list, tuple)):
        raise FaceDataError(path, 'expected a list of encoded images, got %s' % _describe(bins))
    try:
        issame = np.asarray(issame)
    except Exception:  # noqa: BLE001
        issame = None
    if issame is None or issame.ndim != 1 or issame.dtype.kind not in 'bui':
        raise FaceDataError(path, 'expected issame_list to be a list of booleans')
    if issame.dtype.kind != 'b' and not np.isin(issame, (0, 1)).all():
        raise FaceDataError(path, 'issame_list holds values other than 0/1/True/False')
    if len(bins) % 2:
        raise FaceDataError(path, 'odd number of images (%d): pairs are images 2i and 2i+1'
                            % len(bins))
    if len(bins) != 2 * len(issame):
        raise FaceDataError(path, '%d images but %d pairs in issame_list: expected two images '
                            'a pair' % (len(bins), len(issame)))
    images = [_as_image_bytes(b, path, i) for i, b in enumerate(bins)]
    return images, issame.astype(bool)


def decode_image(buf, path='<image>', record=None):
    """Encoded JPEG/PNG bytes -> RGB uint8 numpy array (H, W, 3); ImageDecodeError if undecodable.

    Face files are encoded from BGR with OpenCV; decoding with OpenCV and converting to RGB
    gives the same pixels as ``mx.image.imdecode``.
    """
    arr = np.frombuffer(buf, dtype=np.uint8)
    img = cv2.imdecode(arr, cv2.IMREAD_COLOR) if arr.size else None
    if img is None:
        head = bytes(buf[:4])
        raise ImageDecodeError(path, 'image does not decode (%d bytes starting %r); expected a '
                            'JPEG or PNG' % (len(buf), head), record=record)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def load_bin(path, image_size=(112, 112)):
    """Load a verification .bin -> ``(data_list, issame_list)``.

    ``data_list = [originals, flipped]``: each an ``mxnet.np`` float32 array (2N, 3, H, W) in
    [0, 1] (the scaling of the training transform), the second flipped left-right. Images of
    another size are resized to ``image_size`` (H, W). ``issame_list``: bool numpy array (N,).
    """
    path = os.fspath(path)
    images, issame = read_bin(path)
    height, width = image_size
    out = np.empty((len(images), 3, height, width), dtype=np.float32)
    for i, buf in enumerate(images):
        img = decode_image(buf, path, i)
        if img.shape[:2] != (height, width):
            img = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
        out[i] = img.transpose(2, 0, 1)
    out *= 1.0 / 255
    flipped = np.ascontiguousarray(out[:, :, :, ::-1])
    return [mnp.array(out), mnp.array(flipped)], issame


def write_bin(path, images, issame, protocol=4):
    """Write a verification .bin: ``images`` 2N encoded images (bytes), ``issame`` N booleans.

    Written to a temporary file and renamed into place.
    """
    images = [bytes(b) for b in images]
    issame = [bool(s) for s in issame]
    if len(images) != 2 * len(issame):
        raise ValueError('%d images for %d pairs: expected two images a pair'
                         % (len(images), len(issame)))
    path = os.fspath(path)
    tmp = path + '.tmp-%d' % os.getpid()
    try:
        with open(tmp, 'wb') as f:
            pickle.dump((images, issame), f, protocol=protocol)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
