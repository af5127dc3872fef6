"""dmlc RecordIO files (``train.rec`` + ``train.idx``) as InsightFace and im2rec write them.

A record on disk is ``magic (u32) | lrec (u32) | data | pad to 4 bytes``, little-endian, with
``lrec = cflag << 29 | length``. A payload that contains the magic word at a 4-byte aligned offset
is split there into parts (cflag 1 = first, 2 = middle, 3 = last; 0 = whole record) and the reader
puts the magic back between the parts. The ``.idx`` beside it is text, ``key<TAB>offset`` a line.

Each payload starts with the image header ``<IfQQ`` (flag, label, id, id2); when flag > 0, ``flag``
float32 labels follow (label[0] is the class id); the encoded image is the rest.

This is a pure-Python reader: bad files raise ``FaceDataError`` naming the file, the record key
and what was expected, instead of crashing the process.
"""
import collections
import os
import struct

import numpy as np

from .errors import FaceDataError
from .fileio import commit, discard, temporary_path, write_text

__all__ = ['RECORD_MAGIC', 'IRHeader', 'pack_record', 'unpack_record', 'read_index',
           'RecordReader', 'RecordWriter', 'FaceRecWriter', 'scan_records', 'build_index',
           'write_face_rec']

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


def read_index(idx_path, rec_size=None):
    """Parse a ``.idx`` file into an ordered dict key -> byte offset, validating every line.

    Each line must be ``key<TAB>offset`` (two non-negative integers, the offset 4-byte aligned);
    keys must be unique and, when ``rec_size`` is given, offsets inside the .rec.
    """
    index = collections.OrderedDict()
    try:
        with open(idx_path, 'rb') as f:
            lines = f.read().split(b'\n')
    except FileNotFoundError:
        raise FaceDataError(idx_path, 'index file not found; it lists "key<TAB>offset" for each '
                            'record of the .rec beside it (rebuild it with "scripts/'
                            'prepare_data.py index REC" or gluon_arcface.recordio.build_index)'
                            ) from None
    except OSError as e:
        raise FaceDataError(idx_path, 'cannot read the index file (%s); expected a text file of '
                            '"key<TAB>offset" lines' % (e.strerror or e)) from None
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        parts = line.split()
        try:
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                raise ValueError
            key, offset = int(parts[0]), int(parts[1])
            if offset % 4:
                raise ValueError
        except ValueError:
            raise FaceDataError(idx_path, 'expected "key<TAB>offset" (two non-negative integers, '
                                'the offset a multiple of 4), got %r'
                                % raw[:80].decode('latin1'),
                                line=lineno) from None
        if key in index:
            raise FaceDataError(idx_path, 'key %d appears twice (first at offset %d, again at '
                                'offset %d); expected each record once' % (key, index[key], offset),
                                line=lineno)
        if rec_size is not None and offset + 8 > rec_size:
            raise FaceDataError(idx_path, 'offset %d of key %d is past the end of the .rec '
                                '(%d bytes): the index does not belong to this .rec or the .rec '
                                'is truncated' % (offset, key, rec_size), line=lineno)
        index[key] = offset
    return index


def _flag_error(path, cflag, offset, first, record):
    return FaceDataError(path, 'unexpected continuation flag %d at byte %d (expected %s)'
                         % (cflag, offset, '0 (whole record) or 1 (first part)' if first else
                            '2 (middle part) or 3 (last part)'), record=record)


class RecordReader:
    """Random access to the records of a ``.rec`` through its ``.idx``.

    ``keys`` lists the record keys in index order; ``read(key)`` returns the payload bytes.
    Safe to use from several threads or processes (each process opens its own file handle).

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
        self.index = read_index(self.idx_path, self.size)
        self.keys = list(self.index)
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
        key, offset = max(self.index.items(), key=lambda item: item[1])
        end = offset
        for data_offset, length in self._parts(key, offset):
            end = data_offset + length
        padded = (end + 3) & ~3
        if not self.partial_index and not end <= self.size <= padded:
            raise FaceDataError(self.idx_path, 'the last indexed record (key %d) ends at byte %d '
                                'but %s has %d bytes: the index does not list every record of '
                                'the .rec (rebuild it with "scripts/prepare_data.py index REC" or '
                                'gluon_arcface.recordio.build_index, or pass partial_index=True '
                                'to use a subset on purpose)'
                                % (key, padded, self.rec_path, self.size))

    def read(self, key):
        """Payload bytes of record ``key`` (multi-part records joined with the magic word)."""
        try:
            offset = self.index[key]
        except KeyError:
            raise FaceDataError(self.idx_path, 'no record with key %r' % (key,)) from None
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
