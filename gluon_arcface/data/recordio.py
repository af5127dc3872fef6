"""dmlc RecordIO files (``train.rec`` + ``train.idx``) as InsightFace and im2rec write them.

A record on disk is ``magic (u32) | lrec (u32) | data | pad to 4 bytes``, little-endian, with
``lrec = cflag << 29 | length``. A payload that contains the magic word at a 4-byte aligned offset
is split there into parts (cflag 1 = first, 2 = middle, 3 = last; 0 = whole record) and the reader
puts the magic back between the parts. The ``.idx`` beside it is text, ``key<TAB>offset`` a line.

Each payload starts with the image header ``<IfQQ`` (flag, label, id, id2); when flag > 0, ``flag``
float32 labels follow (label[0] is the class id); the encoded image is the rest.

This is a pure-Python reader: bad files raise ``FaceDataError`` naming the file, the record key
and what was expected, instead of crashing the process. The index is held in numpy arrays
(:class:`RecordIndex`), so that opening MS1M's 5.8 million records takes about a second and
under 100 MB.
"""
import array
import collections
import collections.abc
import itertools
import operator
import os
import struct

import numpy as np

from ..runtime.errors import FaceDataError
from ..runtime.fileio import commit, discard, temporary_path, write_text

__all__ = ['RECORD_MAGIC', 'IRHeader', 'pack_record', 'unpack_record', 'read_index',
           'RecordIndex', 'KeySequence', 'RecordReader', 'RecordWriter', 'FaceRecWriter',
           'scan_records', 'build_index', 'write_face_rec']

RECORD_MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack('<I', RECORD_MAGIC)
_LENGTH_MASK = (1 << 29) - 1
_HEADER = struct.Struct('<IfQQ')  # 24 bytes
_WORD = struct.Struct('<II')

IRHeader = collections.namedtuple('IRHeader', ['flag', 'label', 'id', 'id2'])
IRHeader.__doc__ = ('Image record header: label is a float (flag 0) or a float32 array of '
                    '``flag`` values.')


def pack_record(label, image=b'', id=0, id2=0):
    """Payload bytes of one record: header, optional float32 labels, then the encoded image.

    ``label`` is a number (written in the header, flag 0) or a sequence (flag = its length).
    """
    if np.ndim(label) == 0:
        head = _HEADER.pack(0, float(label), id, id2)
        return head + bytes(image)
    labels = np.asarray(label, dtype='<f4').ravel()
    return _HEADER.pack(labels.size, 0.0, id, id2) + labels.tobytes() + bytes(image)


def unpack_record(payload, path='<record>', key=None):
    """Split a payload into ``(IRHeader, image_bytes)``; label is a float or float32 array."""
    if len(payload) < _HEADER.size:
        raise FaceDataError(path, 'payload of %d bytes is shorter than the 24-byte image header'
                            % len(payload), record=key)
    flag, label, id_, id2 = _HEADER.unpack_from(payload)
    rest = memoryview(payload)[_HEADER.size:]
    if flag > 0:
        if flag * 4 > len(rest):
            raise FaceDataError(path, 'header announces %d float32 labels but only %d bytes follow'
                                % (flag, len(rest)), record=key)
        label = np.frombuffer(rest[:flag * 4], dtype='<f4').astype(np.float32)
        rest = rest[flag * 4:]
    return IRHeader(flag, label, id_, id2), bytes(rest)


_INT64_MAX = (1 << 63) - 1
_MAX_DIGITS = 18  # numbers the fast path reads (below 10**18 < 2**63); longer ones go line by line
_PARSE_CHUNK = 1 << 20  # bytes of .idx text the fast path checks and parses at a time
_LINE_EXPECTED = ('expected "key<TAB>offset" (two non-negative integers, the offset a multiple '
                  'of 4), got %r')
_LINE_TOO_LARGE = ('expected "key<TAB>offset" (two non-negative integers below 2**63, the offset '
                   'a multiple of 4), got %r')


def _as_key(key):
    """``key`` as a Python int, or None when no record key can equal it (as a dict would say)."""
    try:
        return operator.index(key)
    except TypeError:
        if isinstance(key, (float, np.floating)) and float(key).is_integer():
            return int(key)
        return None


def _int_chunks(array, size=1 << 16):
    """The values of a 1-D int64 array as Python ints, a chunk of lists at a time."""
    for lo in range(0, len(array), size):
        yield array[lo:lo + size].tolist()


class KeySequence(collections.abc.Sequence):
    """A read-only sequence of record keys, held in a 1-D int64 numpy array (``array``).

    Indexing gives Python ints (a slice gives a KeySequence sharing the array); ``key in keys``
    is vectorised; ``np.asarray(keys)`` is the array itself. It equals any sequence or array of
    the same keys in the same order (``keys == [1, 2, 3]``), so code written for the lists of
    keys this replaces keeps working, without a Python int per record.
    """

    def __init__(self, array):
        self.array = np.asarray(array, dtype=np.int64)

    def __len__(self):
        return len(self.array)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return KeySequence(self.array[i])
        return int(self.array[i])

    def __iter__(self):
        for chunk in _int_chunks(self.array):
            yield from chunk

    def __contains__(self, key):
        key = _as_key(key)
        if key is None or not -_INT64_MAX - 1 <= key <= _INT64_MAX:
            return False
        return bool((self.array == key).any())

    def __array__(self, dtype=None):
        return self.array if dtype is None else self.array.astype(dtype)

    def __eq__(self, other):
        if isinstance(other, KeySequence):
            other = other.array
        elif not isinstance(other, (np.ndarray, collections.abc.Sequence)) or isinstance(
                other, (str, bytes)):
            return NotImplemented
        if len(other) != len(self.array):
            return False
        return bool(np.array_equal(self.array, np.asarray(other)))

    __hash__ = None

    def __repr__(self):
        return 'KeySequence(%s)' % np.array2string(self.array, threshold=8, separator=', ')


class RecordIndex(collections.abc.Mapping):
    """The ``.idx`` of a RecordIO file: a read-only mapping record key -> byte offset.

    Held in two int64 numpy arrays in file order, ``key_array`` and ``offset_array`` (the 5.8
    million records of MS1M take 93 MB, where a dict took over a GB); ``position(key)`` finds a
    record by arithmetic when the keys are consecutive in file order (as InsightFace and im2rec
    write them), else by binary search. Iterating, ``items()`` and ``values()`` go in file order
    and give Python ints.
    """

    def __init__(self, key_array, offset_array):
        self.key_array = np.ascontiguousarray(key_array, dtype=np.int64)
        self.offset_array = np.ascontiguousarray(offset_array, dtype=np.int64)
        keys, n = self.key_array, len(self.key_array)
        self._first = None  # the first key when the keys are first, first + 1, ... in file order
        self._order = None  # positions in key order, when the file is not in key order
        if n < 2 or bool((keys[1:] > keys[:-1]).all()):
            self._sorted = keys
            if n and int(keys[-1]) - int(keys[0]) == n - 1:
                self._first = int(keys[0])
        else:
            order = np.argsort(keys, kind='stable')
            self._sorted = keys[order]
            self._order = order.astype(np.int32) if n < 2 ** 31 else order

    @property
    def in_key_order(self):
        """True when the file lists the keys in increasing order."""
        return self._order is None

    def position(self, key):
        """Where record ``key`` is in the file's order (0, 1, ...), or -1 if it is not listed."""
        key, n = _as_key(key), len(self.key_array)
        if key is None:
            return -1
        if self._first is not None:
            pos = key - self._first
            return pos if 0 <= pos < n else -1
        if not -_INT64_MAX - 1 <= key <= _INT64_MAX:
            return -1
        i = int(np.searchsorted(self._sorted, key))
        if i == n or int(self._sorted[i]) != key:
            return -1
        return i if self._order is None else int(self._order[i])

    def keys_between(self, lo, hi):
        """The keys ``k`` with ``lo <= k < hi`` in file order: an int64 array (a view of
        ``key_array`` when the file is in key order)."""
        keys = self.key_array
        if self._order is None:
            return keys[np.searchsorted(keys, lo):np.searchsorted(keys, hi)]
        return keys[(keys >= lo) & (keys < hi)]

    def first_duplicate(self):
        """``(position, earlier position)`` of the first record in the file whose key an
        earlier record already has, or None."""
        if self._order is None:
            return None
        same = self._sorted[1:] == self._sorted[:-1]
        if not same.any():
            return None
        again = int(self._order[1:][same].min())  # stable sort: the later record of each pair
        first = int(self._order[np.searchsorted(self._sorted, self.key_array[again])])
        return again, first

    def __getitem__(self, key):
        pos = self.position(key)
        if pos < 0:
            raise KeyError(key)
        return int(self.offset_array[pos])

    def __contains__(self, key):
        return self.position(key) >= 0

    def __len__(self):
        return len(self.key_array)

    def __iter__(self):
        for chunk in _int_chunks(self.key_array):
            yield from chunk

    def items(self):
        return _IndexItems(self)

    def values(self):
        return _IndexValues(self)

    def __repr__(self):
        return 'RecordIndex(%d records)' % len(self)


class _IndexItems(collections.abc.ItemsView):
    def __iter__(self):
        index = self._mapping
        for keys, offsets in zip(_int_chunks(index.key_array), _int_chunks(index.offset_array)):
            yield from zip(keys, offsets)


class _IndexValues(collections.abc.ValuesView):
    def __iter__(self):
        for chunk in _int_chunks(self._mapping.offset_array):
            yield from chunk


def _blocks(f):
    """The rest of file ``f`` in blocks of about ``_PARSE_CHUNK`` bytes."""
    while True:
        block = f.read(_PARSE_CHUNK)
        if not block:
            return
        yield block


def _parse_plain(f):
    """Fast path: the lines of binary file ``f`` as ``digits<TAB>digits<LF>`` only (or CR LF; the
    last line end optional), each number at most 18 digits, each offset a multiple of 4 ->
    ``(keys, offsets)``, int64 arrays in file order. None when any line differs in any way (a
    blank line, a space, garbage, ...): ``_parse_lines`` then reads the file line by line and
    finds the line at fault.

    A first pass counts the lines; the second, a block of whole lines at a time, checks where the
    separators are (bytes below '0'; none may be above '9'), that they alternate TAB, LF (or
    CR LF) and that no number is empty or too long, and lets numpy's C parser read the numbers.
    At most a block of text is in memory at once, besides the two arrays.
    """
    n = tabs = 0
    last = b''
    for block in _blocks(f):
        n, tabs, last = n + block.count(b'\n'), tabs + block.count(b'\t'), block[-1:]
    n += last not in (b'', b'\n')  # a last line without LF
    if tabs != n:
        return None
    keys, offsets = np.empty(n, np.int64), np.empty(n, np.int64)
    f.seek(0)
    row, rest = 0, b''
    for block in itertools.chain(_blocks(f), [b'']):
        text = rest + block
        cut = text.rfind(b'\n') + 1 if block else len(text)
        text, rest = text[:cut], text[cut:]
        if not text:
            if len(rest) > _PARSE_CHUNK:  # no LF in a whole block: not a line of two numbers
                return None
            continue
        chunk = np.frombuffer(text, np.uint8)
        if chunk.max() > 0x39:  # above '9'
            return None
        seps = np.flatnonzero(chunk < 0x30)  # below '0': must be the TABs and LFs
        kinds = chunk[seps]
        if chunk[-1] != 0x0A:  # the last line has no LF
            seps, kinds = np.append(seps, len(chunk)), np.append(kinds, 0x0A)
        crs = np.flatnonzero(kinds == 0x0D)
        if len(crs):  # CR LF line ends (a Windows .idx): the CR ends the line, if an LF follows
            lfs = crs + 1
            if lfs[-1] >= len(seps) or not ((kinds[lfs] == 0x0A).all()
                                            and (seps[lfs] == seps[crs] + 1).all()):
                return None
            kinds[crs] = 0x0A
            seps, kinds = np.delete(seps, lfs), np.delete(kinds, lfs)
        m = len(seps) // 2
        if (len(seps) % 2 or row + m > n or not (kinds[0::2] == 0x09).all()
                or not (kinds[1::2] == 0x0A).all()):
            return None
        widths = np.diff(seps)  # the digits between two separators, plus one
        if not 1 <= seps[0] <= _MAX_DIGITS or (
                len(widths) and not (widths.min() >= 2 and widths.max() <= _MAX_DIGITS + 1)):
            return None
        values = np.fromstring(text, dtype=np.int64, sep=' ')  # any whitespace separates
        if values.size != 2 * m or (values[1::2] & 3).any():  # or an offset not aligned
            return None
        keys[row:row + m] = values[0::2]
        offsets[row:row + m] = values[1::2]
        row += m
    return (keys, offsets) if row == n else None


def _parse_lines(f):
    """Careful path, the lines of binary file ``f`` one by one: ``(keys, offsets, line numbers,
    bad)`` of the records before the first malformed line; ``bad`` is ``(line number, message)``
    of that line, or None."""
    keys, offsets, lines = array.array('q'), array.array('q'), array.array('q')
    bad = None
    for lineno, raw in enumerate(f, 1):  # lines end at LF only, as with split(b'\n')
        raw = raw[:-1] if raw.endswith(b'\n') else raw
        line = raw.strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            if max(len(p.lstrip(b'0')) for p in parts) > 19:
                why = _LINE_TOO_LARGE
            else:
                key, offset = int(parts[0]), int(parts[1])
                if max(key, offset) > _INT64_MAX:
                    why = _LINE_TOO_LARGE
                elif offset % 4:
                    why = _LINE_EXPECTED
                else:
                    keys.append(key)
                    offsets.append(offset)
                    lines.append(lineno)
                    continue
        else:
            why = _LINE_EXPECTED
        bad = (lineno, why % raw[:80].decode('latin1'))
        break
    return (np.frombuffer(keys, np.int64), np.frombuffer(offsets, np.int64),
            np.frombuffer(lines, np.int64), bad)


def read_index(idx_path, rec_size=None, rec_path=None):
    """Parse a ``.idx`` file into a :class:`RecordIndex` (a read-only mapping key -> byte offset,
    in file order), validating every line.

    Each line must be ``key<TAB>offset`` (two non-negative integers below 2**63, the offset 4-byte
    aligned; blank lines are skipped); keys must be unique and, when ``rec_size`` is given,
    offsets inside the .rec (``rec_path``, named in that error). The first line at fault is
    reported as a FaceDataError naming the .idx, the line and what was expected. A well-formed
    file is read by vectorised numpy (MS1M's 5.8 million lines in under a second), any other
    line by line.
    """
    try:
        with open(idx_path, 'rb') as f:
            plain = _parse_plain(f)
            if plain is not None:
                (keys, offsets), lines, bad = plain, None, None
            else:
                f.seek(0)
                keys, offsets, lines, bad = _parse_lines(f)
    except FileNotFoundError:
        raise FaceDataError(idx_path, 'index file not found; it lists "key<TAB>offset" for each '
                            'record of the .rec beside it (rebuild it with "scripts/'
                            'prepare_data.py index REC" or gluon_arcface.data.recordio.build_index)'
                            ) from None
    except OSError as e:
        raise FaceDataError(idx_path, 'cannot read the index file (%s); expected a text file of '
                            '"key<TAB>offset" lines' % (e.strerror or e)) from None
    index = RecordIndex(keys, offsets)
    offsets = index.offset_array

    def line_of(pos):
        return pos + 1 if lines is None else int(lines[pos])

    # (line, rank, error): the first line at fault is reported; on one line a malformed line
    # comes first, then a repeated key, then an offset past the end (the order of the checks).
    errors = []
    if bad is not None:
        errors.append((bad[0], 0, FaceDataError(idx_path, bad[1], line=bad[0])))
    duplicate = index.first_duplicate()
    if duplicate is not None:
        again, first = duplicate
        errors.append((line_of(again), 1, FaceDataError(
            idx_path, 'key %d appears twice (first at offset %d, again at offset %d); expected '
            'each record once' % (index.key_array[again], offsets[first], offsets[again]),
            line=line_of(again))))
    if rec_size is not None and len(offsets):
        past = offsets > rec_size - 8
        if past.any():
            pos = int(past.argmax())
            errors.append((line_of(pos), 2, FaceDataError(
                idx_path, 'offset %d of key %d is past the end of the .rec%s (%d bytes): the '
                'index does not belong to this .rec or the .rec is truncated'
                % (offsets[pos], index.key_array[pos], ' file %s' % rec_path if rec_path else '',
                   rec_size), line=line_of(pos))))
    if errors:
        raise min(errors, key=lambda e: e[:2])[2]
    return index


def _flag_error(path, cflag, offset, first, record):
    return FaceDataError(path, 'unexpected continuation flag %d at byte %d (expected %s)'
                         % (cflag, offset, '0 (whole record) or 1 (first part)' if first else
                            '2 (middle part) or 3 (last part)'), record=record)


class RecordReader:
    """Random access to the records of a ``.rec`` through its ``.idx``.

    ``index`` is the :class:`RecordIndex` (key -> byte offset); ``keys`` the record keys in
    index order, a :class:`KeySequence` (Python ints on indexing, a numpy array underneath);
    ``key in reader`` tells whether the index lists a key; ``read(key)`` returns the payload
    bytes. Safe to use from several threads or processes (each process opens its own file handle).

    On opening, the index is validated line by line and the record it lists last (by offset)
    must end where the .rec ends: a .rec cut short, or an .idx that does not list the records
    at the end of the .rec, is reported at once rather than in the middle of training.
    ``partial_index=True`` accepts an index that deliberately lists only some records.
    No read is larger than the file: a corrupt length field cannot make the reader allocate
    more memory than the .rec holds.
    """

    def __init__(self, rec_path, idx_path=None, partial_index=False):
        self.rec_path = os.fspath(rec_path)
        self.idx_path = (os.fspath(idx_path) if idx_path
                         else os.path.splitext(self.rec_path)[0] + '.idx')
        if not os.path.isfile(self.rec_path):
            raise FaceDataError(self.rec_path, 'RecordIO file not found')
        self.size = os.path.getsize(self.rec_path)
        self._fh, self._pid = None, None
        self.index = read_index(self.idx_path, self.size, self.rec_path)
        self.keys = KeySequence(self.index.key_array)
        self.partial_index = partial_index
        if self.index:
            self._check_end()

    def __len__(self):
        return len(self.index)

    def __contains__(self, key):
        return key in self.index

    def _file(self):
        if self._fh is None or self._pid != os.getpid():
            try:
                self._fh, self._pid = open(self.rec_path, 'rb'), os.getpid()
            except OSError as e:
                raise FaceDataError(self.rec_path, 'cannot open the RecordIO file (%s)'
                                    % (e.strerror or e)) from None
        return self._fh

    def _parts(self, key, offset):
        """Yield ``(data offset, length)`` of each part of the record at ``offset``."""
        first = True
        while True:
            head = os.pread(self._file().fileno(), 8, offset)
            if len(head) < 8:
                raise FaceDataError(self.rec_path, 'file ends inside the record header at byte %d '
                                    '(expected 8 bytes: magic and length; truncated .rec?)'
                                    % offset, record=key)
            magic, lrec = _WORD.unpack(head)
            if magic != RECORD_MAGIC:
                raise FaceDataError(self.rec_path, 'expected the RecordIO magic 0xced7230a at byte '
                                    '%d, found 0x%08x: the .idx does not match the .rec or the '
                                    'file is corrupt' % (offset, magic), record=key)
            cflag, length = lrec >> 29, lrec & _LENGTH_MASK
            if cflag > 3 or (cflag in (0, 1)) != first:
                raise _flag_error(self.rec_path, cflag, offset, first, key)
            if offset + 8 + length > self.size:
                raise FaceDataError(self.rec_path, 'record part at byte %d announces %d bytes but '
                                    'the file ends %d bytes later (truncated .rec?)'
                                    % (offset, length, self.size - offset - 8), record=key)
            yield offset + 8, length
            offset += 8 + ((length + 3) & ~3)
            if cflag in (0, 3):
                return
            first = False

    def _check_end(self):
        pos = int(np.argmax(self.index.offset_array))  # the first of the largest, as max() did
        key, offset = int(self.index.key_array[pos]), int(self.index.offset_array[pos])
        end = offset
        for data_offset, length in self._parts(key, offset):
            end = data_offset + length
        padded = (end + 3) & ~3
        if not self.partial_index and not end <= self.size <= padded:
            raise FaceDataError(self.idx_path, 'the last indexed record (key %d) ends at byte %d '
                                'but %s has %d bytes: the index does not list every record of '
                                'the .rec (rebuild it with "scripts/prepare_data.py index REC" or '
                                'gluon_arcface.data.recordio.build_index, or pass '
                                'partial_index=True to use a subset on purpose)'
                                % (key, padded, self.rec_path, self.size))

    def read(self, key):
        """Payload bytes of record ``key`` (multi-part records joined with the magic word)."""
        pos = self.index.position(key)
        if pos < 0:
            raise FaceDataError(self.idx_path, 'no record with key %r' % (key,))
        offset = int(self.index.offset_array[pos])
        # os.pread keeps concurrent readers (thread pools) from racing on a shared file position.
        parts = []
        for data_offset, length in self._parts(key, offset):
            data = os.pread(self._file().fileno(), length, data_offset)
            if len(data) < length:
                raise FaceDataError(self.rec_path, 'record of %d bytes at byte %d is cut short '
                                    'after %d bytes (the file shrank while reading?)'
                                    % (length, data_offset - 8, len(data)), record=key)
            parts.append(data)
        return _MAGIC_BYTES.join(parts)

    def read_header(self, key):
        """``(IRHeader, image_bytes)`` of record ``key``."""
        return unpack_record(self.read(key), self.rec_path, key)

    def close(self):
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __getstate__(self):  # file handles do not cross process boundaries
        state = self.__dict__.copy()
        state['_fh'] = state['_pid'] = None
        return state

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def scan_records(rec_path):
    """Yield ``(offset, payload)`` of each record, reading the .rec sequentially.

    Errors name the record by its position (0, 1, 2, ...), the key ``build_index`` gives it.
    """
    try:
        f = open(rec_path, 'rb')
    except FileNotFoundError:
        raise FaceDataError(rec_path, 'RecordIO file not found') from None
    except OSError as e:
        raise FaceDataError(rec_path, 'cannot open the RecordIO file (%s)'
                            % (e.strerror or e)) from None
    with f:
        size = os.fstat(f.fileno()).st_size
        offset, number = 0, 0
        while True:
            start, parts = offset, []
            while True:
                head = f.read(8)
                if not head and not parts:
                    return
                if len(head) < 8:
                    raise FaceDataError(rec_path, 'file ends inside a record header at byte %d '
                                        '(expected 8 bytes: magic and length; truncated .rec?)'
                                        % offset, record=number)
                magic, lrec = _WORD.unpack(head)
                if magic != RECORD_MAGIC:
                    raise FaceDataError(rec_path, 'expected the RecordIO magic 0xced7230a at byte '
                                        '%d, found 0x%08x: the file is corrupt or not a .rec'
                                        % (offset, magic), record=number)
                cflag, length = lrec >> 29, lrec & _LENGTH_MASK
                if cflag > 3 or (cflag in (0, 1)) != (not parts):
                    raise _flag_error(rec_path, cflag, offset, not parts, number)
                if offset + 8 + length > size:
                    raise FaceDataError(rec_path, 'record part at byte %d announces %d bytes but '
                                        'the file ends %d bytes later (truncated .rec?)'
                                        % (offset, length, size - offset - 8), record=number)
                padded = min((length + 3) & ~3, size - offset - 8)  # the last pad may be missing
                data = f.read(padded)
                if len(data) < padded:
                    raise FaceDataError(rec_path, 'record at byte %d is cut short (the file '
                                        'shrank while reading?)' % offset, record=number)
                parts.append(data[:length])
                offset += 8 + padded
                if cflag in (0, 3):
                    break
            yield start, _MAGIC_BYTES.join(parts)
            number += 1


def build_index(rec_path, idx_path=None):
    """Write the ``.idx`` of a ``.rec`` by scanning it; keys are 0, 1, 2, ... in file order.

    This is how InsightFace and im2rec number records when they write them sequentially.
    Returns the number of records.
    """
    idx_path = idx_path or os.path.splitext(rec_path)[0] + '.idx'
    lines = ['%d\t%d\n' % (key, offset)
             for key, (offset, _) in enumerate(scan_records(rec_path))]
    write_text(idx_path, ''.join(lines))
    return len(lines)


class _CommitOnSuccess:
    """Context manager: ``close()`` (commit) on a normal exit, ``abort()`` on an exception."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


class RecordWriter(_CommitOnSuccess):
    """Write ``.rec`` + ``.idx`` atomically: both appear under their names only on ``close()``.

    Use as a context manager; on an exception the temporary files are removed and any existing
    files under the final names are left untouched.
    """

    def __init__(self, rec_path, idx_path=None):
        self.rec_path = os.fspath(rec_path)
        self.idx_path = (os.fspath(idx_path) if idx_path
                         else os.path.splitext(self.rec_path)[0] + '.idx')
        self._tmp_rec = temporary_path(self.rec_path)
        self._tmp_idx = temporary_path(self.idx_path)
        self._rec = open(self._tmp_rec, 'wb')
        self._idx = open(self._tmp_idx, 'w')
        self._offset = 0
        self._keys = {}  # key -> (offset, payload length)

    def write(self, key, payload):
        """Append one record under integer ``key``."""
        key = int(key)
        if key in self._keys:
            raise ValueError('record key %d written twice to %s' % (key, self.rec_path))
        self._keys[key] = (self._offset, len(payload))
        self._idx.write('%d\t%d\n' % (key, self._offset))
        payload = bytes(payload)
        # Split at every 4-byte aligned occurrence of the magic word, as dmlc's writer does.
        cuts, start = [], 0
        for pos in range(0, len(payload) - 3, 4):
            if payload[pos:pos + 4] == _MAGIC_BYTES:
                cuts.append((start, pos))
                start = pos + 4
        cuts.append((start, len(payload)))
        for i, (lo, hi) in enumerate(cuts):
            if len(cuts) == 1:
                cflag = 0
            else:
                cflag = 1 if i == 0 else (3 if i == len(cuts) - 1 else 2)
            length = hi - lo
            if length > _LENGTH_MASK:
                raise ValueError('record %d of %s is larger than 2^29 bytes' % (key, self.rec_path))
            self._rec.write(_WORD.pack(RECORD_MAGIC, (cflag << 29) | length))
            self._rec.write(payload[lo:hi])
            self._rec.write(b'\0' * ((4 - length % 4) % 4))
            self._offset += 8 + ((length + 3) & ~3)

    def overwrite(self, key, payload):
        """Replace the payload of an already written, unsplit record by one of the same length."""
        offset, length = self._keys[int(key)]
        payload = bytes(payload)
        if len(payload) != length or _MAGIC_BYTES in payload[:len(payload) - len(payload) % 4]:
            raise ValueError('overwrite needs a payload of the same length without the magic word')
        self._rec.flush()
        self._rec.seek(offset + 8)
        self._rec.write(payload)
        self._rec.seek(0, os.SEEK_END)

    def close(self):
        """Flush and move both files into place."""
        if self._rec is None:
            return
        for f in (self._rec, self._idx):
            f.close()
        commit(self._tmp_rec, self.rec_path)
        commit(self._tmp_idx, self.idx_path)
        self._rec = self._idx = None

    def abort(self):
        """Drop what was written; files under the final names stay as they were."""
        if self._rec is None:
            return
        for f, tmp in ((self._rec, self._tmp_rec), (self._idx, self._tmp_idx)):
            f.close()
            discard(tmp)
        self._rec = self._idx = None


class FaceRecWriter(_CommitOnSuccess):
    """Stream face images into ``rec_path`` + ``.idx``, in class-id order.

    ``add(class_id, encoded_image)`` appends one image (class ids 0..K-1, non-decreasing).
    With ``with_header`` (InsightFace layout) record 0 carries label ``[a, b]``, images are keys
    1..a-1 and keys a..b-1 hold each identity's image key range ``[start, end)``; record 0 is
    written first as a placeholder of the same size and filled in on ``close()``. Without it
    (im2rec layout) images are keys 0..N-1. Files appear under their names only on close().
    """

    def __init__(self, rec_path, with_header=True):
        self.with_header = with_header
        self._writer = RecordWriter(rec_path)
        self._next_key = 1 if with_header else 0
        self._ranges = collections.OrderedDict()  # class id -> [first key, end key)
        if with_header:
            self._writer.write(0, pack_record([0, 0]))

    def add(self, class_id, image):
        class_id = int(class_id)
        last = next(reversed(self._ranges)) if self._ranges else 0
        if class_id < last or class_id < 0:
            self.abort()
            raise ValueError('images must come in non-decreasing class id order (got %d after %d)'
                             % (class_id, last))
        key = self._next_key
        self._writer.write(key, pack_record(class_id, image))
        lo = self._ranges.get(class_id, (key, key))[0]
        self._ranges[class_id] = (lo, key + 1)
        self._next_key += 1

    def close(self):
        if self._writer is None:
            return
        if self.with_header:
            a = self._next_key
            num_ids = (next(reversed(self._ranges)) + 1) if self._ranges else 0
            for class_id in range(num_ids):
                self._writer.write(a + class_id, pack_record(self._ranges.get(class_id, (0, 0))))
            self._writer.overwrite(0, pack_record([a, a + num_ids]))
        self._writer.close()
        self._writer = None

    def abort(self):
        if self._writer is not None:
            self._writer.abort()
            self._writer = None


def write_face_rec(rec_path, samples, with_header=True):
    """Write ``(class_id, encoded_image_bytes)`` samples, sorted by class id, as a face .rec
    (see FaceRecWriter for the layouts). Returns the number of images."""
    count = 0
    with FaceRecWriter(rec_path, with_header) as writer:
        for label, image in samples:
            writer.add(label, image)
            count += 1
    return count
