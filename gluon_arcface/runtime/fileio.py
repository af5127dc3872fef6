"""Writing files so that nothing a user has is ever left half-written.

Every file the package writes (checkpoints, .bin and RecordIO files, property, indexes, JSON,
plots, exported models, downloads) goes to a temporary file in the folder of its final name,
is flushed to disk, and is renamed over the final name only when complete: a crash, a full disk
or Ctrl-C leaves the previous file as it was and no temporary file behind.
"""
import contextlib
import json
import os
import tempfile

__all__ = ['temporary_path', 'commit', 'discard', 'atomic_write', 'write_text', 'write_json']


def temporary_path(path):
    """A new, hidden, empty file beside ``path`` (same file system, so the rename is atomic)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp',
                               dir=folder)
    os.close(fd)
    return tmp


def commit(tmp, path):
    """Flush ``tmp`` to disk and rename it to ``path`` (replacing it); permissions as a file
    the user creates (mkstemp's are private)."""
    with open(tmp, 'rb+') as f:
        os.fsync(f.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def discard(tmp):
    """Remove a temporary file if it is still there."""
    if tmp and os.path.exists(tmp):
        os.remove(tmp)


@contextlib.contextmanager
def atomic_write(path):
    """Yield a temporary file name beside ``path``; on success it replaces ``path``.

    On an exception (or Ctrl-C) the temporary file is removed and ``path`` is left as it was.
    """
    tmp = temporary_path(path)
    try:
        yield tmp
        commit(tmp, path)
    finally:
        discard(tmp)


def write_text(path, text, encoding='utf-8'):
    """Write ``text`` to ``path``, atomically."""
    with atomic_write(path) as tmp:
        with open(tmp, 'w', encoding=encoding) as f:
            f.write(text)
    return path


def write_json(path, obj):
    """Write ``obj`` as indented JSON, atomically."""
    return write_text(path, json.dumps(obj, indent=2))
