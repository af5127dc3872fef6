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
import pickletools
import warnings

import numpy as np
from ..runtime import _mxnet  # noqa: F401  (NumPy semantics, first)
from mxnet import np as mnp

from ..runtime.errors import FaceDataError, UnsafePickleError
from ..runtime.devices import available_memory
from ..runtime.fileio import atomic_write
from .images import decode_image, resize_face, to_network_input

__all__ = ['load_bin', 'read_bin', 'write_bin']

_MAX_DIMS = 32  # numpy's limit on array dimensions


class _Unsafe(Exception):
    """Raised inside the unpickler; read_bin turns it into UnsafePickleError with the path."""


class _Malformed(Exception):
    """Raised inside the unpickler; read_bin turns it into FaceDataError with the path."""


def _safe_dtype(dtype):
    """A fresh, canonical numpy dtype of booleans or numbers; anything else is refused.

    Object dtypes would let the pickle place arbitrary objects in an array. A dtype's pickled
    state (BUILD) can also set its flags or fields: such a dtype is refused, and an accepted one
    is rebuilt from its type code so that nothing of the pickled state reaches numpy.
    """
    if not isinstance(dtype, np.dtype):
        raise _Malformed('expected a numpy dtype, got %s' % type(dtype).__name__)
    refused = _Unsafe('refusing a numpy array of dtype %s (flags %d): only arrays of booleans '
                      'or numbers (encoded images, issame flags) are accepted'
                      % (dtype, dtype.flags))
    if dtype.hasobject or dtype.flags or dtype.fields is not None or dtype.subdtype is not None:
        raise refused
    try:
        fresh = np.dtype(dtype.str)
    except TypeError:
        raise refused from None
    if fresh.kind not in 'biuf' or fresh.itemsize not in (1, 2, 4, 8):
        raise refused
    return fresh


def _make_dtype(spec, align=False, copy=True):
    """``numpy.dtype`` as pickles call it, e.g. ``dtype('u1', False, True)``: always a new copy
    (never numpy's shared built-in dtype, which the pickle's BUILD would then modify)."""
    if isinstance(spec, bytes):
        spec = spec.decode('latin1')
    if not isinstance(spec, str) or len(spec) > 8:
        raise _Unsafe('refusing numpy.dtype(%s): expected a simple type code such as "u1"'
                      % type(spec).__name__)
    try:
        dtype = np.dtype(spec, False, True)
    except TypeError as e:
        raise _Malformed('unknown numpy dtype %r (%s)' % (spec, e)) from None
    _safe_dtype(dtype)
    return dtype


def _raw_length(raw):
    if isinstance(raw, (bytes, bytearray)):
        return len(raw)
    if isinstance(raw, str):  # Python-2 str, decoded as latin1: one character per byte
        return len(raw)
    raise _Unsafe('refusing numpy array data of type %s (only raw bytes are accepted; a list '
                  'would make an array of Python objects)' % type(raw).__name__)


def _checked_shape(shape):
    if not (isinstance(shape, tuple) and len(shape) <= _MAX_DIMS and
            all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise _Malformed('expected an array shape (a tuple of non-negative integers), got %r'
                         % (shape,)[:80])
    count = 1
    for n in shape:
        count *= n
    return count


class _CheckedArray(np.ndarray):
    """What ``_reconstruct`` makes: its pickled state is checked before numpy sees it.

    The data must be raw bytes whose length is exactly what the shape and dtype announce, so
    no array larger than the bytes already read is ever allocated.
    """

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Malformed('malformed numpy array state')
        version = state[0] if len(state) == 5 else 1
        shape, dtype, fortran, raw = state[-4:]
        dtype = _safe_dtype(dtype)
        count = _checked_shape(shape)
        if count * dtype.itemsize != _raw_length(raw):
            raise _Malformed('numpy array of shape %s and dtype %s needs %d bytes, the pickle '
                             'holds %d' % (shape, dtype, count * dtype.itemsize, _raw_length(raw)))
        super().__setstate__((version, shape, dtype, bool(fortran), raw))


class _Global:
    """What ``find_class`` hands the unpickler: a checked stand-in for an allowed global.

    It has no ``__dict__`` and refuses BUILD, so a pickle cannot change the stand-ins (they are
    shared by every later load); ``numpy.ndarray`` is a marker that only ``_reconstruct`` takes.
    """
    __slots__ = ('_func', '_name')

    def __init__(self, name, func=None):
        self._name, self._func = name, func

    def __call__(self, *args):
        if self._func is None:
            raise _Unsafe('refusing to call %s' % self._name)
        return self._func(*args)

    def __setstate__(self, state):
        raise _Unsafe('refusing to modify %s' % self._name)

    def __reduce__(self):
        raise TypeError('not picklable')


_NDARRAY = _Global('numpy.ndarray')  # only _reconstruct may receive it


def _reconstruct(subtype, shape=None, dtype=None):
    """``numpy.core.multiarray._reconstruct``: an empty array that BUILD fills in (checked)."""
    if subtype is not _NDARRAY:
        raise _Unsafe('refusing to reconstruct an array of type %s'
                      % type(subtype).__name__)
    return np.ndarray.__new__(_CheckedArray, (0,), np.uint8)  # the pickled shape is not used


def _frombuffer(buf, dtype, shape, order='C'):
    """``numpy.core.numeric._frombuffer`` (protocol-5 arrays), with the same checks."""
    dtype = _safe_dtype(dtype)
    count = _checked_shape(shape)
    if count * dtype.itemsize != _raw_length(buf):
        raise _Malformed('numpy array of shape %s and dtype %s needs %d bytes, the pickle holds '
                         '%d' % (shape, dtype, count * dtype.itemsize, _raw_length(buf)))
    if isinstance(buf, str):
        buf = buf.encode('latin1')
    arr = np.frombuffer(bytes(buf), dtype=dtype).reshape(shape, order='F' if order == 'F' else 'C')
    return arr.copy()


def _scalar(dtype, data=None):
    """``numpy.core.multiarray.scalar`` (e.g. a pickled numpy.bool_), booleans/numbers only."""
    dtype = _safe_dtype(dtype)
    if _raw_length(data) != dtype.itemsize:
        raise _Malformed('numpy scalar of dtype %s needs %d bytes' % (dtype, dtype.itemsize))
    if isinstance(data, str):
        data = data.encode('latin1')
    return np.frombuffer(bytes(data), dtype=dtype)[0]


_LATIN1 = {'latin1', 'latin-1', 'iso-8859-1', 'iso8859-1', 'l1'}


def _encode(text, encoding='utf-8', errors='strict'):
    """``_codecs.encode(str, 'latin1')``: how Python 3 writes bytes in protocol 2."""
    if not isinstance(text, str) or str(encoding).lower() not in _LATIN1:
        raise _Unsafe('refusing _codecs.encode(%s, %r): only latin1 text is accepted'
                      % (type(text).__name__, encoding))
    try:
        return text.encode('latin1')
    except UnicodeEncodeError as e:
        raise _Malformed(str(e)) from None


def _byte_string(kind):
    def make(data=b'', encoding=None, errors='strict'):
        """``bytes(...)`` / ``bytearray(...)`` of existing bytes or latin1 text, never of a
        size (``bytearray(10**12)`` would allocate that much)."""
        if isinstance(data, str):
            if str(encoding).lower() not in _LATIN1:
                raise _Unsafe('refusing %s(str, %r)' % (kind.__name__, encoding))
            data = data.encode('latin1')
        if not isinstance(data, (bytes, bytearray)):
            raise _Unsafe('refusing %s(%s): only bytes are accepted'
                          % (kind.__name__, type(data).__name__))
        return kind(data)
    return make


def _bool(value=False):
    if not isinstance(value, (bool, int, np.bool_, np.integer)):
        raise _Unsafe('refusing bool(%s)' % type(value).__name__)
    return bool(value)


# The only globals a verification .bin may name, each mapped to a checked stand-in. Python-2
# names (__builtin__) are listed as written: the unpickler resolves names itself, nothing is
# imported.
_GLOBALS = {}
for _core in ('numpy.core', 'numpy._core'):  # numpy 1.x / 2.x module names
    _GLOBALS[(_core + '.multiarray', '_reconstruct')] = _reconstruct
    _GLOBALS[(_core + '.multiarray', 'scalar')] = _scalar
    _GLOBALS[(_core + '.numeric', '_frombuffer')] = _frombuffer
for _builtins in ('builtins', '__builtin__'):
    _GLOBALS[(_builtins, 'bool')] = _bool
    _GLOBALS[(_builtins, 'bytes')] = _byte_string(bytes)
    _GLOBALS[(_builtins, 'bytearray')] = _byte_string(bytearray)
_GLOBALS.update({('numpy', 'dtype'): _make_dtype, ('_codecs', 'encode'): _encode})
_GLOBALS = {key: _Global('%s.%s' % key, func) for key, func in _GLOBALS.items()}
_GLOBALS[('numpy', 'ndarray')] = _NDARRAY


# Opcodes a .bin never needs: persistent ids and the copyreg extension registry.
_REFUSED_OPCODES = {'PERSID', 'BINPERSID', 'EXT1', 'EXT2', 'EXT4'}
_PUT_OPCODES = {'PUT', 'BINPUT', 'LONG_BINPUT'}


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, f):
        # latin1 maps Python-2 str one-to-one onto code points, so the original bytes come back
        # with .encode('latin1'); it is also what numpy needs for Python-2 array pickles.
        super().__init__(f, encoding='latin1', fix_imports=False)

    def find_class(self, module, name):
        try:
            return _GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise _Unsafe('refusing to load %s.%s: a verification .bin may only hold encoded '
                          'images (bytes or uint8 arrays) and booleans'
                          % (module, name)) from None

    def persistent_load(self, pid):
        raise _Unsafe('refusing persistent id %r' % (pid,))


def _read_stringnl(f):
    """The argument of protocol 0's STRING opcode, kept as bytes (pickletools would decode it as
    ASCII, which Python-2 pickles of binary strings are not)."""
    return pickletools.read_stringnl(f, decode=False)


def _opcodes(data):
    """Yield ``(opcode, argument, position)`` like ``pickletools.genops``, without running
    anything. Each declared length is checked against the bytes that remain before it is read."""
    f = io.BytesIO(data)
    while True:
        pos = f.tell()
        code = f.read(1)
        if not code:
            raise ValueError('the pickle ends at byte %d without a STOP opcode (truncated file?)'
                             % pos)
        op = pickletools.code2op.get(code.decode('latin1'))
        if op is None:
            raise ValueError('unknown pickle opcode %r at byte %d' % (code, pos))
        arg = None
        if op.arg is not None:
            arg = (_read_stringnl(f) if op.arg is pickletools.stringnl else op.arg.reader(f))
        yield op, arg, pos
        if op.name == 'STOP':
            return


def _prescan(data, path):
    """Walk the pickle's opcodes without running them and refuse, before anything is allocated,
    what could exhaust memory: a declared length longer than the file, a frame longer than the
    file, a memo index far beyond the number of opcodes (CPython sizes its memo table by the
    largest index), and opcodes a .bin never uses."""
    count = 0
    try:
        for op, arg, pos in _opcodes(data):
            count += 1
            if op.name in _REFUSED_OPCODES:
                raise UnsafePickleError(path, 'refusing the pickle opcode %s at byte %d: a '
                                        'verification .bin never uses it' % (op.name, pos))
            if op.name in _PUT_OPCODES and not 0 <= int(arg) <= count:
                raise FaceDataError(path, 'not a readable verification .bin: pickle memo index %d '
                                    'at byte %d is out of range (expected at most %d)'
                                    % (int(arg), pos, count))
            if op.name == 'FRAME' and arg > len(data) - pos:
                raise FaceDataError(path, 'not a readable verification .bin: pickle frame of %d '
                                    'bytes at byte %d runs past the end of the file (%d bytes, '
                                    'truncated?)'
                                    % (arg, pos, len(data)))
    except FaceDataError:
        raise
    except Exception as e:  # noqa: BLE001 - readers report malformed streams in several ways
        raise FaceDataError(path, 'not a readable verification .bin (a pickle of (images, '
                            'issame_list)): %s' % str(e)[:200]) from None


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


def _as_issame(issame, path):
    """issame_list (a list/tuple of booleans or 0/1, or a 1-d bool/int array) -> bool array."""
    if isinstance(issame, np.ndarray):
        arr = np.asarray(issame)
        if arr.ndim != 1 or arr.dtype.kind not in 'bui':
            raise FaceDataError(path, 'expected issame_list to be a list of booleans, got %s'
                                % _describe(arr))
        bad = np.flatnonzero((arr != 0) & (arr != 1)) if arr.dtype.kind != 'b' else ()
        if len(bad):
            raise FaceDataError(path, 'issame_list[%d] is %r, expected True/False (or 1/0)'
                                % (bad[0], arr[bad[0]].item()))
        return arr.astype(bool)
    if not isinstance(issame, (list, tuple)):
        raise FaceDataError(path, 'expected issame_list to be a list of booleans, got %s'
                            % _describe(issame))
    for i, s in enumerate(issame):
        if not isinstance(s, (bool, int, np.bool_, np.integer)) or s not in (0, 1):
            raise FaceDataError(path, 'issame_list[%d] is %s, expected True/False (or 1/0)'
                                % (i, _describe(s) if not isinstance(s, (bool, int)) else s))
    return np.array([bool(s) for s in issame], dtype=bool)


def read_bin(path):
    """Unpickle a .bin safely -> ``(list of encoded image bytes, bool numpy array)``.

    Only the types a .bin holds are accepted (lists, tuples, bytes, Python-2 str, booleans,
    uint8/bool numpy arrays); a pickle naming anything else raises UnsafePickleError before it
    is called, and a malformed or truncated file raises FaceDataError.
    """
    path = os.fspath(path)
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except FileNotFoundError:
        raise FaceDataError(path, 'verification .bin not found') from None
    except OSError as e:
        raise FaceDataError(path, 'cannot read the verification .bin (%s)'
                            % (e.strerror or e)) from None
    _prescan(data, path)
    try:
        with warnings.catch_warnings():  # protocol 0 strings with odd escapes still load
            warnings.simplefilter('ignore', DeprecationWarning)
            obj = _SafeUnpickler(io.BytesIO(data)).load()
    except _Unsafe as e:
        raise UnsafePickleError(path, str(e)) from None
    except _Malformed as e:
        raise FaceDataError(path, 'not a readable verification .bin: %s' % e) from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a malformed file
        raise FaceDataError(path, 'not a readable verification .bin (a pickle of (images, '
                            'issame_list)): %s: %s' % (type(e).__name__, str(e)[:200])) from None
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise FaceDataError(path, 'expected a pickled pair (images, issame_list), got %s'
                            % _describe(obj))
    bins, issame = obj
    if not isinstance(bins, (list, tuple)):
        raise FaceDataError(path, 'expected a list of encoded images, got %s' % _describe(bins))
    issame = _as_issame(issame, path)
    if len(bins) % 2:
        raise FaceDataError(path, 'odd number of images (%d): pairs are images 2i and 2i+1'
                            % len(bins))
    if len(bins) != 2 * len(issame):
        raise FaceDataError(path, '%d images but %d pairs in issame_list: expected two images '
                            'a pair' % (len(bins), len(issame)))
    images = [_as_image_bytes(b, path, i) for i, b in enumerate(bins)]
    return images, issame


def load_bin(path, image_size=(112, 112), prepare=None, progress=False):
    """Load a verification .bin -> ``(data_list, issame_list)``.

    ``data_list = [originals, flipped]``: each an ``mxnet.np`` float32 array (2N, 3, H, W) in
    [0, 1] (the scaling of the training transform), the second flipped left-right. Images of
    another size are resized to ``image_size`` (H, W) as the training images are
    (``images.resize_face``). ``issame_list``: bool numpy array (N,). ``prepare``: a function
    applied to each decoded RGB uint8 image first (e.g. ``detect.realign``); ``progress``: a
    progress bar over the images.
    """
    path = os.fspath(path)
    images, issame = read_bin(path)
    height, width = image_size
    need = 2 * len(images) * 3 * height * width * 4
    available = available_memory()
    if available is not None and need > available:
        raise FaceDataError(path, '%d images at %dx%d need %.1f GB as float32 (originals and '
                            'flipped), but only %.1f GB of memory is available'
                            % (len(images), height, width, need / 2 ** 30, available / 2 ** 30))
    out = np.empty((len(images), 3, height, width), dtype=np.float32)
    from tqdm import tqdm
    for i, buf in enumerate(tqdm(images, desc=os.path.basename(path), unit='img',
                                 disable=not progress, leave=False)):
        img = decode_image(buf, path, i)
        if prepare is not None:
            img = prepare(img)
        to_network_input(resize_face(img, (height, width)), out=out[i])
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
    with atomic_write(os.fspath(path)) as tmp:
        with open(tmp, 'wb') as f:
            pickle.dump((images, issame), f, protocol=protocol)
