"""Gallery search speed (``scripts/benchmark.py --gallery``): milliseconds per probe of
:meth:`FaceGallery.search <gluon_arcface.eval.gallery.FaceGallery.search>` at 10K to 1M
enrolled faces, one probe at a time and in batches, side by side with faiss's exact
inner-product index (``faiss-cpu``, when installed) and with the memory-bandwidth bound of
reading the gallery once.

Each size's cases are timed in interleaved rounds (so that other load on the machine affects
all alike) and the median is reported. Embeddings are random unit vectors (D = 128, 4 faces a
person): search time does not depend on their values.
"""
import time

import numpy as np

from .gallery import FaceGallery, merge_top_k

__all__ = ['memory_bandwidth', 'gallery_cases', 'run_gallery_benchmark', 'format_gallery_report']


def memory_bandwidth(megabytes=512, dim=128, rounds=3):
    """Read bandwidth of this machine in GB/s, as a search reads a gallery: the best of
    ``rounds`` float32 matrix-vector products (BLAS, all its threads) over an (n, ``dim``)
    matrix of ``megabytes`` (larger than any cache)."""
    x = np.ones((megabytes * (1 << 20) // (4 * dim), dim), np.float32)
    v = np.ones(dim, np.float32)
    best = np.inf
    for _ in range(rounds):
        t = time.perf_counter()
        x @ v
        best = min(best, time.perf_counter() - t)
    return x.nbytes / best / 1e9


def _random_gallery(n, dim, per_person, seed):
    rng = np.random.RandomState(seed)
    emb = rng.randn(n, dim).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.arange(n) // per_person
    return FaceGallery.from_arrays(labels, emb, dict(name='random')), emb, rng


def _float16_search(emb16, probes, k, block=1 << 16):
    """Top-k entries with the gallery stored as float16, converted a block at a time."""
    best_i = np.zeros((len(probes), 0), np.int64)
    best_s = np.zeros((len(probes), 0), np.float32)
    for start in range(0, len(emb16), block):
        s = probes @ emb16[start:start + block].astype(np.float32).T
        best_i, best_s = merge_top_k(best_i, best_s, s, start, k)
    return best_i, best_s


def gallery_cases(n, dim=128, per_person=4, top_k=5, seed=0):
    """The cases for a gallery of ``n`` faces -> ``({name: search(probes)}, {name: bytes per
    entry})``."""
    gallery, emb, _ = _random_gallery(n, dim, per_person, seed)
    cases = {'gallery (float32, max)': lambda q: gallery.search(q, top_k, 'max'),
             'gallery (float32, centroid)': lambda q: gallery.search(q, top_k, 'centroid')}
    memory = {'gallery (float32, max)': (gallery.embeddings.nbytes + gallery.owner.nbytes) / n,
              'gallery (float32, centroid)': (gallery.templates('centroid').nbytes
                                              + gallery.embeddings.nbytes) / n}
    emb16 = emb.astype(np.float16)
    cases['float16 storage (entries)'] = lambda q: _float16_search(emb16, q, top_k)
    memory['float16 storage (entries)'] = emb16.nbytes / n
    try:
        import faiss
    except ImportError:
        faiss = None
    if faiss is not None:
        index = faiss.IndexFlatIP(dim)
        index.add(emb)
        cases['faiss IndexFlatIP (entries)'] = lambda q: index.search(q, top_k)
        memory['faiss IndexFlatIP (entries)'] = index.ntotal * dim * 4 / n
    return cases, memory


def run_gallery_benchmark(sizes=(10_000, 100_000, 1_000_000), dim=128, batch=256, rounds=5,
                          log=print, seed=0):
    """Time every case at every size -> dict: ``sizes`` {n: {case: dict(single_ms,
    batched_ms, bytes_per_entry)}}, ``bandwidth_gbs`` and the bound per probe."""
    from ..runtime.threads import thread_info
    bandwidth = memory_bandwidth()
    log('memory read bandwidth: %.1f GB/s' % bandwidth)
    info = thread_info()
    machine = dict(cpu=info['cpu_model'], cores=info['physical_cores'],
                   threads=info['compute_threads'])
    result = dict(machine=machine, bandwidth_gbs=bandwidth, dim=dim, batch=batch,
                  sizes={})
    rng = np.random.RandomState(seed + 1)
    for n in sizes:
        cases, memory = gallery_cases(n, dim, seed=seed)
        log('gallery of %d faces: %s' % (n, ', '.join(cases)))
        one = rng.randn(1, dim).astype(np.float32)
        many = rng.randn(batch, dim).astype(np.float32)
        times = {name: dict(single=[], batched=[]) for name in cases}
        for search in cases.values():  # warm-up (first-touch, thread pools)
            search(one), search(many)
        for _ in range(rounds):
            for name, search in cases.items():
                reps = max(1, int(2e6 // n))
                t = time.perf_counter()
                for _ in range(reps):
                    search(one)
                times[name]['single'].append((time.perf_counter() - t) / reps)
                t = time.perf_counter()
                search(many)
                times[name]['batched'].append((time.perf_counter() - t) / batch)
        result['sizes'][n] = {name: dict(
            single_ms=1e3 * float(np.median(t['single'])),
            batched_ms=1e3 * float(np.median(t['batched'])),
            bytes_per_entry=memory[name]) for name, t in times.items()}
        result['sizes'][n]['_bound_ms'] = 1e3 * n * dim * 4 / (bandwidth * 1e9)
        del cases
    return result


def format_gallery_report(result):
    """The benchmark as a Markdown table."""
    m = result['machine']
    lines = ['CPU: %s; %d threads; memory read bandwidth %.1f GB/s; D = %d, batches of %d '
             'probes, top-5' % (m.get('cpu'), m.get('threads') or 0, result['bandwidth_gbs'],
                                result['dim'], result['batch']), '',
             '| faces | search | ms / probe (one) | ms / probe (batched) | bytes / face | '
             'bound: reading float32 once (ms) |', '| ---: | --- | ---: | ---: | ---: | ---: |']
    for n, cases in result['sizes'].items():
        bound = cases['_bound_ms']
        for name, c in cases.items():
            if name.startswith('_'):
                continue
            lines.append('| %s | %s | %.3f | %.4f | %.0f | %.3f |' % (
                '{:,}'.format(int(n)), name, c['single_ms'], c['batched_ms'],
                c['bytes_per_entry'], bound))
    return '\n'.join(lines)
