"""A gallery of known people for 1:N identification: their face embeddings, search by cosine
similarity, and a file that runs no code when read.

:class:`FaceGallery` holds L2-normalised float32 embeddings, several per person, kept in one
(M, D) matrix with each person's rows contiguous, and the identity of the model that made them
(``model``: name, weights' SHA-1, framing, input size, embedding size). A person's score for a
probe is, by ``scoring``:

* ``'max'``: the best cosine similarity over the person's embeddings (nearest neighbour);
* ``'mean'``: the mean cosine similarity over them;
* ``'centroid'``: the cosine similarity with their normalised mean embedding (one template per
  person, as insightface's IJB code averages a subject's features).

Search is batched matrix products (blocks of :data:`PROBE_BLOCK` probes x blocks of about
:data:`CHUNK_ROWS` gallery rows, whole people each), a per-person reduction and a running
partial sort: memory stays small and a block of scores stays in cache.

The file (``.npz``, NumPy's zip of arrays, read with ``allow_pickle=False``) holds
``embeddings`` (M, D) float32, ``owner`` (M,) int32 person index, and ``meta``: JSON bytes with
the format name and version, the model, the people's names, each embedding's source and a
SHA-256 of the arrays. A pickle, a corrupt or truncated file, a hand-edited one (digest) or
one from another model is a :class:`~gluon_arcface.runtime.errors.FaceDataError` /
:class:`~gluon_arcface.runtime.errors.ConfigError` naming the file; saving is atomic.
"""
import hashlib
import json
import os
import zipfile

import numpy as np

from ..runtime.errors import ConfigError, FaceDataError
from ..runtime.fileio import atomic_write

__all__ = ['FaceGallery', 'SCORINGS', 'GALLERY_FORMAT', 'GALLERY_VERSION', 'PROBE_BLOCK',
           'CHUNK_ROWS', 'merge_top_k',
           'same_model']

SCORINGS = ('max', 'mean', 'centroid')
GALLERY_FORMAT = 'gluon_arcface-gallery'
GALLERY_VERSION = 1
#: Search scores this many probes against this many gallery rows at a time (a block of
#: scores, 16 MB of float32, stays in the CPU's cache while it is reduced).
PROBE_BLOCK = 256
CHUNK_ROWS = 16384
#: The model fields two galleries (or a gallery and a probe's model) must share.
MODEL_KEYS = ('name', 'sha1', 'framing', 'image_size', 'emb_size')


def same_model(a, b):
    """Whether two model records (``FaceGallery.model``) describe the same embeddings: the
    fields of :data:`MODEL_KEYS` that both have are equal."""
    return all(a[k] == b[k] for k in MODEL_KEYS if a.get(k) is not None and b.get(k) is not None)


def _describe(model):
    return ', '.join('%s %s' % (k, model[k]) for k in MODEL_KEYS if model.get(k) is not None)


def merge_top_k(best_i, best_s, scores, offset, k):
    """A running top k over blocks of columns: the best ``k`` of ``(best_i, best_s)`` (N, <=k)
    and of a block of ``scores`` (N, n) whose column 0 is index ``offset`` -> ``(indices,
    scores)``, best first (ties in index order)."""
    kk = min(k, scores.shape[1])
    part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk] if kk < scores.shape[1] else \
        np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    cand_s = np.concatenate([best_s, np.take_along_axis(scores, part, 1)], 1)
    cand_i = np.concatenate([best_i, part + offset], 1)
    keep = np.argsort(-cand_s, axis=1, kind='stable')[:, :k]
    return np.take_along_axis(cand_i, keep, 1), np.take_along_axis(cand_s, keep, 1)


class FaceGallery:
    """Known people and their face embeddings.

    ``model``: a dict describing the model that makes the embeddings (see module notes; e.g.
    ``FaceEmbedder.model_record()``); ``emb_size``: D (else taken from the first embeddings).
    """

    def __init__(self, model=None, emb_size=None):
        self.model = dict(model or {})
        self.emb_size = emb_size or self.model.get('emb_size')
        self.names = []  # people, in enrolment order
        self._emb = np.zeros((0, self.emb_size or 0), np.float32)
        self._owner = np.zeros(0, np.int32)
        self._sources = []
        self._cache = {}
        self.extra = {}  # facts saved with the gallery (e.g. its threshold)

    # ------------------------------------------------------------------ contents
    def __len__(self):
        return len(self.names)

    def __contains__(self, name):
        return name in self.names

    def __repr__(self):
        return 'FaceGallery(%d people, %d embeddings, %s)' % (
            len(self), self.num_embeddings, _describe(self.model) or 'model not recorded')

    @property
    def num_embeddings(self):
        return len(self._owner)

    @property
    def embeddings(self):
        """(M, D) float32, each person's rows contiguous (read-only view)."""
        view = self._emb.view()
        view.flags.writeable = False
        return view

    @property
    def owner(self):
        """(M,) int32: the index into :attr:`names` of each embedding's person."""
        return self._owner.copy()

    @property
    def sources(self):
        """What each embedding came from (a file name, or '')."""
        return list(self._sources)

    def counts(self):
        """Embeddings per person, in :attr:`names` order -> (P,) int."""
        return np.bincount(self._owner, minlength=len(self.names))

    def embeddings_of(self, name):
        """(n, D) float32 embeddings of one person (KeyError if unknown)."""
        return self._emb[self._owner == self._index(name)]

    def _index(self, name):
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError('%r is not in the gallery' % (name,)) from None

    def add(self, name, embeddings, sources=None):
        """Enrol ``embeddings`` ((n, D) or (D,), any float; normalised here) for ``name`` (a new
        person, or more of a known one). ``sources``: n strings naming where each came from."""
        if not isinstance(name, str) or not name or name != name.strip() or '\n' in name:
            raise ValueError('a person\'s name must be a non-empty string without surrounding '
                             'spaces or line breaks, got %r' % (name,))
        emb = np.atleast_2d(np.asarray(embeddings, dtype=np.float64))
        if emb.ndim != 2 or not len(emb):
            raise ValueError('expected (n, D) embeddings for %r, got shape %s' % (name, emb.shape))
        if self.emb_size is None:
            self.emb_size = emb.shape[1]
            self._emb = np.zeros((0, self.emb_size), np.float32)
        if emb.shape[1] != self.emb_size:
            raise ValueError('%r: embeddings of size %d, the gallery holds size %d'
                             % (name, emb.shape[1], self.emb_size))
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        if not np.all(np.isfinite(emb)) or np.any(norms == 0):
            raise ValueError('%r: embeddings must be finite and non-zero' % (name,))
        sources = [''] * len(emb) if sources is None else [str(s) for s in sources]
        if len(sources) != len(emb):
            raise ValueError('%r: %d sources for %d embeddings' % (name, len(sources), len(emb)))
        if name not in self.names:
            self.names.append(name)
        idx = self.names.index(name)
        at = int(np.searchsorted(self._owner, idx, side='right'))
        self._emb = np.insert(self._emb, at, (emb / norms).astype(np.float32), axis=0)
        self._owner = np.insert(self._owner, at, np.full(len(emb), idx, np.int32))
        self._sources[at:at] = sources
        self._cache.clear()
        return self

    @classmethod
    def from_arrays(cls, labels, embeddings, model=None, sources=None):
        """A gallery from (M, D) ``embeddings`` and their M person ``labels`` (names) at once
        (people in order of first appearance; each person's rows in their given order)."""
        labels = [str(n) for n in labels]
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or len(emb) != len(labels):
            raise ValueError('expected (M, D) embeddings for M labels, got %s for %d'
                             % (emb.shape, len(labels)))
        gallery = cls(model, emb.shape[1])
        names, owner = np.unique(labels, return_index=False, return_inverse=True)
        first = {}
        for i, lab in enumerate(labels):
            first.setdefault(lab, i)
        order_people = sorted(range(len(names)), key=lambda k: first[names[k]])
        rank = np.empty(len(names), np.int64)
        rank[order_people] = np.arange(len(names))
        owner = rank[owner]
        rows = np.argsort(owner, kind='stable')
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        if not np.all(np.isfinite(emb)) or np.any(norms == 0):
            raise ValueError('embeddings must be finite and non-zero')
        gallery.names = [str(names[k]) for k in order_people]
        gallery._emb = np.ascontiguousarray((emb / norms)[rows], dtype=np.float32)
        gallery._owner = owner[rows].astype(np.int32)
        src = [''] * len(labels) if sources is None else [str(x) for x in sources]
        gallery._sources = [src[i] for i in rows]
        return gallery

    def remove(self, name):
        """Forget a person and their embeddings (KeyError if unknown)."""
        idx = self._index(name)
        keep = self._owner != idx
        self._emb, self._sources = self._emb[keep], [s for s, k in zip(self._sources, keep) if k]
        self._owner = self._owner[keep] - (self._owner[keep] > idx)
        del self.names[idx]
        self._cache.clear()
        return self

    # ------------------------------------------------------------------ search
    def person_starts(self):
        """(P,) int: the first row of each person in :attr:`embeddings` (rows are contiguous
        per person, in :attr:`names` order)."""
        if 'starts' not in self._cache:
            self._cache['starts'] = np.searchsorted(self._owner, np.arange(len(self.names)))
        return self._cache['starts']

    def templates(self, scoring='centroid'):
        """(P, D) float32 per-person vectors for ``'mean'`` (mean embedding: its dot product is
        the mean cosine similarity) or ``'centroid'`` (the mean, normalised)."""
        if scoring not in ('mean', 'centroid'):
            raise ValueError("templates are for scoring 'mean' or 'centroid', got %r" % (scoring,))
        if scoring not in self._cache:
            sums = np.add.reduceat(self._emb.astype(np.float64), self.person_starts(), axis=0)
            mean = sums / self.counts()[:, None]
            if scoring == 'centroid':
                mean /= np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
            self._cache[scoring] = mean.astype(np.float32)
        return self._cache[scoring]

    def check_probes(self, probes, model=None, where=None):
        """Probes as float32 (N, D); ConfigError when their size or ``model`` differs from the
        gallery's (``where`` names the gallery file in the message)."""
        probes = np.atleast_2d(np.asarray(probes, dtype=np.float32))
        what = where or 'the gallery'
        if model is not None and not same_model(model, self.model):
            raise ConfigError('%s was made with another model (%s); the probes come from %s: '
                              'enrol the people again with this model' % (
                                  what, _describe(self.model), _describe(model)))
        if probes.ndim != 2 or probes.shape[1] != self.emb_size:
            raise ConfigError('%s holds %s-d embeddings, the probes are %s' % (
                what, self.emb_size, 'of shape %s' % (probes.shape,)))
        return probes

    def _prepared(self, probes, scoring):
        if scoring not in SCORINGS:
            raise ValueError('scoring must be one of %s, got %r' % (SCORINGS, scoring))
        if not len(self.names):
            raise ValueError('the gallery is empty: enrol someone first')
        probes = self.check_probes(probes)
        return probes / np.maximum(np.linalg.norm(probes, axis=1, keepdims=True), 1e-12)

    def _blocks(self, scoring):
        """``(people slice, rows matrix, local starts or None)`` of the gallery in blocks of
        about :data:`CHUNK_ROWS` rows, each a whole number of people: per-person rows for
        'max' (their maximum is taken per person), one template a person otherwise."""
        if scoring != 'max':
            t = self.templates(scoring)
            for p0 in range(0, len(t), CHUNK_ROWS):
                yield slice(p0, p0 + CHUNK_ROWS), t[p0:p0 + CHUNK_ROWS], None
            return
        starts = self.person_starts()
        ends = np.append(starts[1:], len(self._owner))
        p0 = 0
        while p0 < len(starts):
            p1 = max(p0 + 1, int(np.searchsorted(ends, starts[p0] + CHUNK_ROWS, 'right')))
            r0, r1 = starts[p0], ends[p1 - 1]
            yield slice(p0, p1), self._emb[r0:r1], starts[p0:p1] - r0
            p0 = p1

    @staticmethod
    def _block_scores(q, rows, local):
        s = q @ rows.T
        return s if local is None else np.maximum.reduceat(s, local, axis=1)

    def person_scores(self, probes, scoring='max'):
        """Every person's score for each probe -> (N, P) float32 (probes: (N, D), normalised
        here), in blocks of probes and of the gallery."""
        probes = self._prepared(probes, scoring)
        out = np.empty((len(probes), len(self.names)), np.float32)
        for i in range(0, len(probes), PROBE_BLOCK):
            q = probes[i:i + PROBE_BLOCK]
            for people, rows, local in self._blocks(scoring):
                out[i:i + PROBE_BLOCK, people] = self._block_scores(q, rows, local)
        return out

    def search(self, probes, top_k=5, scoring='max'):
        """The ``top_k`` best people for each probe -> ``(indices (N, k) int into`` :attr:`names`
        ``, scores (N, k) float32)``, best first (k = min(top_k, people)). The gallery is read
        block by block, keeping each probe's running top k (no (N, P) matrix is formed)."""
        probes = self._prepared(probes, scoring)
        k = min(int(top_k), len(self.names))
        if k < 1:
            raise ValueError('top_k must be at least 1, got %r' % (top_k,))
        idx = np.zeros((len(probes), k), np.int64)
        top = np.zeros((len(probes), k), np.float32)
        for i in range(0, len(probes), PROBE_BLOCK):
            q = probes[i:i + PROBE_BLOCK]
            best_i = np.zeros((len(q), 0), np.int64)
            best_s = np.zeros((len(q), 0), np.float32)
            for people, rows, local in self._blocks(scoring):
                best_i, best_s = merge_top_k(best_i, best_s, self._block_scores(q, rows, local),
                                             people.start, k)
            idx[i:i + PROBE_BLOCK], top[i:i + PROBE_BLOCK] = best_i, best_s
        return idx, top

    # ------------------------------------------------------------------ file
    def _digest(self):
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self._emb).tobytes())
        h.update(np.ascontiguousarray(self._owner).tobytes())
        return h.hexdigest()

    def save(self, path, extra=None):
        """Write the gallery to ``path`` (``.npz``), atomically: an interrupted save leaves the
        file that was there. ``extra``: more JSON-able facts to keep (e.g. the threshold)."""
        path = os.fspath(path)
        meta = dict(format=GALLERY_FORMAT, version=GALLERY_VERSION, model=self.model,
                    emb_size=self.emb_size, names=self.names, sources=self._sources,
                    sha256=self._digest(), extra=dict(self.extra, **(extra or {})))
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        with atomic_write(path) as tmp:
            with open(tmp, 'wb') as f:
                np.savez(f, embeddings=self._emb, owner=self._owner,
                         meta=np.frombuffer(json.dumps(meta).encode('utf-8'), np.uint8))
        return path

    @classmethod
    def load(cls, path, model=None):
        """Read a gallery written by :meth:`save`. ``model``: the record of the model the probes
        will come from; a gallery of another model is a ConfigError. A file that is not such a
        gallery (pickle, corrupt, truncated, edited) is a FaceDataError naming it."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FaceDataError(path, 'gallery file not found')
        try:
            with np.load(path, allow_pickle=False) as z:
                names = set(z.files)
                if not {'embeddings', 'owner', 'meta'} <= names:
                    raise FaceDataError(path, 'not a gallery: expected the arrays embeddings, '
                                        'owner and meta, found %s' % (sorted(names) or 'none'))
                emb, owner, raw = z['embeddings'], z['owner'], z['meta']
        except FaceDataError:
            raise
        except ValueError as e:  # np.load refuses pickled data
            raise FaceDataError(path, 'not a gallery file (%s); a gallery is an .npz of '
                                'arrays written by FaceGallery.save, never a pickle' % e) from None
        except (OSError, zipfile.BadZipFile, EOFError, KeyError) as e:
            raise FaceDataError(path, 'corrupt or truncated gallery file (%s: %s)'
                                % (type(e).__name__, e)) from None
        try:
            meta = json.loads(bytes(raw.astype(np.uint8)).decode('utf-8'))
        except (ValueError, UnicodeDecodeError) as e:
            raise FaceDataError(path, 'gallery metadata is not JSON (%s)' % e) from None
        if not isinstance(meta, dict) or meta.get('format') != GALLERY_FORMAT:
            raise FaceDataError(path, 'not a %s file' % GALLERY_FORMAT)
        if meta.get('version') != GALLERY_VERSION:
            raise FaceDataError(path, 'gallery format version %r; this package reads version %d'
                                % (meta.get('version'), GALLERY_VERSION))
        gallery = cls(meta.get('model') or {}, meta.get('emb_size'))
        gallery.names = list(meta.get('names') or [])
        gallery._sources = list(meta.get('sources') or [])
        shapes_ok = (emb.dtype == np.float32 and emb.ndim == 2 and owner.ndim == 1
                     and owner.dtype == np.int32 and len(owner) == len(emb)
                     and len(gallery._sources) == len(emb) and emb.shape[1] == gallery.emb_size)
        if not shapes_ok:
            raise FaceDataError(path, 'inconsistent gallery: embeddings %s %s, owner %s %s, %d '
                                'sources' % (emb.dtype, emb.shape, owner.dtype, owner.shape,
                                             len(gallery._sources)))
        gallery._emb, gallery._owner = emb, owner
        if meta.get('sha256') != gallery._digest():
            raise FaceDataError(path, 'the embeddings do not match the digest the gallery was '
                                'saved with (the file was changed after it was written)')
        if len(owner) and (np.any(np.diff(owner) < 0) or owner[0] < 0
                           or owner[-1] >= len(gallery.names)
                           or len(np.unique(owner)) != len(gallery.names)):
            raise FaceDataError(path, 'inconsistent gallery: embedding owners do not match the '
                                '%d names' % len(gallery.names))
        gallery.extra = dict(meta.get('extra') or {})
        if model is not None:
            gallery.check_probes(np.zeros((1, gallery.emb_size)), model, where=path)
        return gallery
