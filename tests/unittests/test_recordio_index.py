"""The RecordIO index at scale: ``read_index`` / ``RecordReader`` / ``FaceRecordDataset`` keep the
``.idx`` in numpy arrays (MS1M has 5.8 million records), and still validate every line as the
dict-based reader did: the first line at fault is named, with what was expected.
"""
import collections
import os
import pickle
import struct

import numpy as onp
import pytest

from gluon_arcface import benchmark, recordio
from gluon_arcface.data.datasets import FaceRecordDataset
from gluon_arcface.runtime.errors import FaceDataError
from gluon_arcface.data.recordio import KeySequence, RecordIndex

N = 200_000
STRIDE = 64


def payload(key):
    return recordio.pack_record(float(key % 7), b'img%d' % key)


def raw_record(data):
    return (struct.pack('<II', recordio.RECORD_MAGIC, len(data)) + data
            + b'\0' * (-len(data) % 4))


def write_index(path, keys, offsets, line=b'%d\t%d\n'):
    path.write_bytes(b''.join(line % pair for pair in zip(keys, offsets)))


def write_sparse(folder, keys, offsets, real):
    """``raw.rec`` (sparse, ending with the record at the largest offset) + ``raw.idx`` listing
    ``keys`` at ``offsets``; real records only for the keys in ``real``."""
    keys, offsets = list(keys), list(offsets)
    rec = folder / 'raw.rec'
    by_key = dict(zip(keys, offsets))
    last = keys[offsets.index(max(offsets))]
    rec.write_bytes(b'')
    os.truncate(rec, max(offsets) + len(raw_record(payload(last))))
    with open(rec, 'r+b') as f:
        for key in set(real) | {last}:
            f.seek(by_key[key])
            f.write(raw_record(payload(key)))
    write_index(folder / 'raw.idx', keys, offsets)
    return str(rec)


@pytest.fixture(scope='module')
def big(tmp_path_factory):
    """A headerless .rec of N records (keys 0..N-1, in order) and its index."""
    folder = tmp_path_factory.mktemp('big')
    keys = range(N)
    return write_sparse(folder, keys, [k * STRIDE for k in keys], real=(0, N // 2, N - 1))


def test_large_index_opens_and_finds_keys(big):
    reader = recordio.RecordReader(big)
    assert len(reader) == N and isinstance(reader.index, RecordIndex)
    assert reader.index.key_array.dtype == onp.int64 and reader.index.key_array.nbytes == 8 * N
    for key in (0, 1, N // 2, N - 1):
        assert key in reader and reader.index[key] == key * STRIDE
        assert reader.index.position(key) == key
    for key in (N, -1, 2 ** 63, -2 ** 70, 'a', None, 0.5):
        assert key not in reader
    assert 3.0 in reader and onp.int64(7) in reader and onp.uint64(N - 1) in reader
    with pytest.raises(KeyError):
        reader.index[N]
    for key in (0, N // 2, N - 1):
        assert reader.read(key) == payload(key)
    with pytest.raises(FaceDataError, match=r'raw\.idx: no record with key %d' % N):
        reader.read(N)
    keys = reader.keys
    assert isinstance(keys, KeySequence) and len(keys) == N
    assert keys[0] == 0 and keys[N // 2] == N // 2 and keys[-1] == N - 1
    assert type(keys[5]) is int and keys[10:13] == [10, 11, 12]
    assert keys == list(range(N)) and keys == range(N) and keys != list(range(N - 1))
    assert N - 1 in keys and N not in keys
    assert onp.asarray(keys) is reader.index.key_array
    items = reader.index.items()
    assert next(iter(items)) == (0, 0) and (5, 5 * STRIDE) in items
    assert list(reader.index)[-1] == N - 1 and sum(1 for _ in reader.index.values()) == N


def test_dataset_over_a_large_headerless_index(big):
    ds = FaceRecordDataset(big)
    assert len(ds) == N and ds.identity_ranges is None
    assert ds.keys == range(N) and ds.keys[N // 2] == N // 2 and ds.keys[-1] == N - 1
    assert onp.shares_memory(onp.asarray(ds.keys), ds.reader.index.key_array)  # no copy
    assert ds.label_of(N // 2) == (N // 2) % 7 and ds.label_of(-1) == (N - 1) % 7
    with pytest.raises(IndexError):
        ds.keys[N]
    copy = pickle.loads(pickle.dumps(ds))
    assert copy.keys == ds.keys and copy.label_of(0) == 0


def test_index_out_of_key_order(tmp_path):
    """An .idx that does not list the keys in order: binary search through a sorted copy; items
    and reader.keys stay in file order."""
    rng = onp.random.RandomState(0)
    keys = rng.permutation(5000) * 3 + 10
    offsets = onp.arange(5000) * STRIDE
    rec = write_sparse(tmp_path, keys.tolist(), offsets.tolist(), real=keys[:3].tolist())
    reader = recordio.RecordReader(rec)
    assert not reader.index.in_key_order
    assert reader.keys == keys and [k for k, _ in reader.index.items()][:3] == keys[:3].tolist()
    for pos in (0, 1, 2500, 4999):
        assert reader.index[int(keys[pos])] == pos * STRIDE
        assert reader.index.position(int(keys[pos])) == pos
    assert 11 not in reader and 9 not in reader and 10 + 3 * 5000 not in reader
    assert reader.read(int(keys[1])) == payload(int(keys[1]))
    ds = FaceRecordDataset(rec)  # record keys[0] is an image (flag 0): headerless
    assert ds.keys == keys
    between = reader.index.keys_between(100, 200)
    assert between.tolist() == [k for k in keys.tolist() if 100 <= k < 200]


def test_header_layout_keys_are_a_view(tmp_path):
    rec = str(tmp_path / 'train.rec')
    recordio.write_face_rec(rec, [(i // 3, b'img') for i in range(12)], with_header=True)
    ds = FaceRecordDataset(rec, num_classes=4)
    assert ds.keys == list(range(1, 13)) and len(ds) == 12
    assert onp.shares_memory(onp.asarray(ds.keys), ds.reader.index.key_array)
    assert ds.identity_ranges == {c: (1 + 3 * c, 4 + 3 * c) for c in range(4)}
    assert [ds.label_of(i) for i in range(12)] == [i // 3 for i in range(12)]


def test_fast_path_and_line_by_line_agree(tmp_path):
    """Blank lines, spaces, stray CRs and very long numbers are read line by line, to the same
    index as the plain file (LF or CR LF, last line end optional) the fast path reads."""
    keys, offsets = list(range(3000)), [k * 8 for k in range(3000)]
    plain = tmp_path / 'plain.idx'
    write_index(plain, keys, offsets)
    reference = recordio.read_index(str(plain))
    for name, line, fast in (('lf', b'%d\t%d\n', True), ('crlf', b'%d\t%d\r\n', True),
                             ('crcrlf', b'%d\t%d\r\r\n', False),
                             ('spaces', b'  %d   %d \n', False), ('blank', b'%d\t%d\n\n', False),
                             ('zeros', b'000%d\t0000000000000000000%d\n', False)):
        path = tmp_path / (name + '.idx')
        write_index(path, keys, offsets, line)
        for data in (path.read_bytes(), path.read_bytes().rstrip(b'\n')):
            path.write_bytes(data)
            with open(path, 'rb') as f:
                assert (recordio._parse_plain(f) is not None) == fast, name
            index = recordio.read_index(str(path))
            assert onp.array_equal(index.key_array, reference.key_array), name
            assert onp.array_equal(index.offset_array, reference.offset_array), name
    for text in (b'', b'\n', b'  \n\r\n'):
        path.write_bytes(text)
        assert len(recordio.read_index(str(path))) == 0


@pytest.mark.parametrize('line, message', [
    (b'3\tabc', 'expected "key<TAB>offset" (two non-negative integers, the offset a multiple '
                "of 4), got '3\\tabc'"),
    (b'3', 'expected "key<TAB>offset"'),
    (b'3\t5', 'the offset a multiple of 4'),
    (b'-1\t0', 'two non-negative integers'),
    (b'1\t0\t7', 'expected "key<TAB>offset"'),
    (b'\xff\xfe\t0', 'expected "key<TAB>offset"'),
    (b'7 9', 'the offset a multiple of 4'),
    (b'99999999999999999999\t0', 'two non-negative integers below 2**63'),
    (b'0\t%d' % (1 << 64), 'two non-negative integers below 2**63'),
    (b'%d\t0' % (N // 2), 'key %d appears twice (first at offset %d, again at offset 0)'
                          % (N // 2, N // 2 * STRIDE)),
    (b'%d\t%d' % (N, N * STRIDE), 'offset %d of key %d is past the end of the .rec file '
                                  % (N * STRIDE, N)),
])
def test_malformed_line_of_a_large_index_is_named(big, tmp_path, line, message):
    """One bad line among N good ones (near the end): the error names the .idx and the line."""
    at = N - 10  # 0-based: the line number is at + 1
    data = open(os.path.splitext(big)[0] + '.idx', 'rb').read().split(b'\n')
    data.insert(at, line)
    rec, idx = tmp_path / 'raw.rec', tmp_path / 'raw.idx'
    os.link(big, rec)
    idx.write_bytes(b'\n'.join(data))
    with pytest.raises(FaceDataError) as err:
        FaceRecordDataset(str(rec))
    assert err.value.path == str(idx) and err.value.line == at + 1
    assert message in str(err.value) and 'raw.idx: line %d: ' % (at + 1) in str(err.value)


def test_first_of_several_faults_is_reported(tmp_path):
    """Faults of every kind in one file: the first line at fault wins, whatever its kind."""
    lines = ['%d\t%d' % (k, 4 * k) for k in range(50)]
    cases = {  # line number -> (replacement, message)
        10: ('3\t300', 'key 3 appears twice (first at offset 12, again at offset 300)'),
        20: ('60\t400000', 'offset 400000 of key 60 is past the end'),
        30: ('31\t7', 'the offset a multiple of 4'),
    }
    for first in sorted(cases):
        bad = list(lines)
        for lineno, (text, _) in cases.items():
            if lineno >= first:
                bad[lineno - 1] = text
        (tmp_path / 'x.idx').write_text('\n'.join(bad) + '\n')
        with pytest.raises(FaceDataError) as err:
            recordio.read_index(str(tmp_path / 'x.idx'), rec_size=1000)
        assert err.value.line == first and cases[first][1] in str(err.value)


def test_truncated_rec_names_the_rec(tmp_path):
    """A .rec cut short: the .idx line whose offset is past the end is named, and so is the
    .rec (the file that is short)."""
    rec = str(tmp_path / 'train.rec')
    recordio.write_face_rec(rec, [(0, b'x' * 40)] * 6, with_header=False)
    offsets = recordio.read_index(str(tmp_path / 'train.idx'))
    data = open(rec, 'rb').read()
    open(rec, 'wb').write(data[:offsets[3] + 6])  # inside the header of key 3's record
    with pytest.raises(FaceDataError) as err:
        FaceRecordDataset(rec)
    assert err.value.path == str(tmp_path / 'train.idx') and err.value.line == 4
    assert 'past the end of the .rec file %s (%d bytes)' % (rec, offsets[3] + 6) in str(err.value)
    assert 'truncated' in str(err.value)
    # Cut inside the data of the last record the index lists: the .rec alone is at fault.
    open(rec, 'wb').write(data[:offsets[3] + 10])
    (tmp_path / 'train.idx').write_text(''.join('%d\t%d\n' % (k, offsets[k]) for k in range(4)))
    with pytest.raises(FaceDataError, match=r'train\.rec: record 3: record part at byte %d '
                                            r'announces \d+ bytes but the file ends .*truncated'
                                            % offsets[3]):
        FaceRecordDataset(rec)


# The dict-based read_index this module replaces, as the reference for the messages.
def reference_read_index(idx_path, rec_size=None):
    index = collections.OrderedDict()
    with open(idx_path, 'rb') as f:
        lines = f.read().split(b'\n')
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


def test_same_results_and_messages_as_the_dict_reader(tmp_path):
    """Random small .idx files, good and bad: the same index, or the same error on the same
    line, as the reader this replaced (numbers below 2**63, which it did not limit). Half the
    files have only well-formed lines (LF or CR LF), read by the fast path."""
    rng = onp.random.RandomState(1)
    pieces = [b'%d\t%d', b'%d\t%d', b'%d\t%d', b'%d\t%d\r', b'%d %d', b' %d\t%d\r', b'%d\r\t%d',
              b'%d\t%d\t1', b'%d', b'', b'  ', b'\r', b'x%d\t%d', b'%d\t-%d', b'%d\t%d.0',
              b'%d\t0x%d', b'\xe9%d\t%d', b'%d\t\t%d']
    path = str(tmp_path / 'r.idx')
    outcomes = collections.Counter()
    for _ in range(600):
        lines, choice = [], pieces[:4] if rng.rand() < 0.5 else pieces  # well-formed, or any
        for _ in range(rng.randint(0, 12)):
            piece = choice[rng.randint(len(choice))]
            numbers = (int(rng.randint(0, 15)), 4 * int(rng.randint(0, 30)) + (
                int(rng.randint(1, 4)) if rng.rand() < 0.1 else 0))
            lines.append(piece % numbers[:piece.count(b'%d')])
        data = b'\n'.join(lines) + (b'\n' if rng.rand() < 0.7 else b'')
        with open(path, 'wb') as f:
            f.write(data)
        rec_size = None if rng.rand() < 0.3 else int(rng.randint(0, 130))
        try:
            expected = list(reference_read_index(path, rec_size).items())
        except FaceDataError as e:
            expected = (e.line, str(e))
        try:
            got = list(recordio.read_index(path, rec_size).items())
        except FaceDataError as e:
            got = (e.line, str(e))
        assert got == expected, data
        outcomes[isinstance(got, list)] += 1
    assert min(outcomes.values()) > 50  # both outcomes were explored


def test_index_open_benchmark():
    result = benchmark.index_open(20_000)
    assert result['records'] == 20_000 and result['seconds'] > 0
    assert result['added_mb'] < 100 and result['idx_mb'] > 0
    report = benchmark.format_report(dict(
        config=dict(num_layers=18, image_size=112, emb_size=256, batch_size=32, num_classes=300,
                    infer_batch_size=64, rounds=1, window=1),
        machine=dict(cpu='cpu', cores=2, avx512_bf16=False, amx=False, mxnet='1.9.1',
                     mxnet_threads=2, threads_from='test', load_average=None),
        skipped=[], index_open=result))
    assert '| open a RecordIO index | 20000 records | ' in report
