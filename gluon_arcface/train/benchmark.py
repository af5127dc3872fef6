"""Throughput measurements behind ``scripts/benchmark.py``: training step, verification inference,
the data loader and peak memory, with PyTorch side by side when it is installed (it is not a
dependency; :mod:`gluon_arcface.nn.torch_reference` holds its network).

Every figure is images per second unless said otherwise. Cases that are compared run in the
same process, their timing windows interleaved round by round (A B C A B C ...), so that load
from other processes on a shared machine slows all of them alike; the report gives the median
over the rounds, and each ratio is the median of the per-round ratios.

Training cases (one SGD step on a fixed batch, FaceResNet + ArcFace head, softmax cross-entropy):

- ``mx_imperative``: the plain blocks (``gluon.nn.PReLU``, written as in the chapter), imperative;
- ``mx_hybridized``: the same blocks hybridized with ``static_alloc`` / ``static_shape``;
- ``mx_default``: what ``train_ch_facerec`` does with a ``TrainBlock``: the package's blocks
  (``fast=True``), hybridized with static_alloc/static_shape, ``split_and_load``, forward +
  backward, loss read back, ``trainer.step``;
- ``mx_amp``: the same with ``amp=True`` (backbone in bfloat16, ``model.set_compute_dtype``);
- ``torch_nchw`` / ``torch_channels_last``: the same network in PyTorch, float32;
  ``torch_bf16_channels_last``: its backbone under ``torch.autocast('cpu', torch.bfloat16)``.

Inference cases (embeddings of a batch in predict mode): ``mx_imperative`` and
``mx_hybridized`` (the plain blocks, imperative and hybridized with static_alloc/static_shape),
``mx_default`` (the package's blocks, hybridized likewise), ``mx_fast`` (:func:`inference_net`,
the fastest correct path, which ``compute_embeddings`` uses), ``mx_fast_amp`` (the same in
bfloat16), ``torch_channels_last`` and ``torch_bf16_channels_last`` (eval mode, no_grad).

Memory: the peak resident memory a training step adds to a process (``VmHWM`` after a few
steps minus the resident memory once the libraries are loaded), each case in a fresh process.
"""
import os
import statistics
import tempfile
import time

import numpy as np
from ..runtime import _mxnet  # noqa: F401  (NumPy semantics, first)
import mxnet as mx
from mxnet import autograd, gluon
from mxnet import np as mnp

from ..nn import torch_reference
from ..data.datasets import read_facerec_meta
from ..runtime.devices import as_contexts
from ..nn.model import TestBlock, TrainBlock, inference_net, set_compute_dtype
from ..runtime.threads import describe_cpu, thread_info

__all__ = ['TRAIN_CASES', 'INFER_CASES', 'MEMORY_CASES', 'interleaved', 'mx_train_case',
           'mx_infer_case', 'memory_case', 'make_rec_dataset',
           'loader_throughput', 'index_open', 'run_benchmark', 'format_report', 'machine_info']

TRAIN_CASES = ('mx_imperative', 'mx_hybridized', 'mx_default', 'mx_amp', 'torch_nchw',
               'torch_channels_last', 'torch_bf16_channels_last')
INFER_CASES = ('mx_imperative', 'mx_hybridized', 'mx_default', 'mx_fast', 'mx_fast_amp',
               'torch_channels_last', 'torch_bf16_channels_last')
MEMORY_CASES = ('mx_default', 'mx_amp', 'torch_channels_last', 'torch_bf16_channels_last')
LR, WD = 0.1, 5e-4  # the chapter's plain SGD


def machine_info():
    """The machine, the threads each framework uses, and the load, for the report."""
    load = os.getloadavg() if hasattr(os, 'getloadavg') else None
    info = thread_info()
    info = dict(cpu=info['cpu_model'], cores=info['physical_cores'], mxnet=mx.__version__,
                mxnet_threads=info['compute_threads'], threads_from=info['threads_from'],
                avx512_bf16=info['avx512_bf16'], amx=info['amx'], amx_used=info['onednn_amx'],
                load_average=[round(v, 2) for v in load] if load else None)
    if torch_reference.available():
        torch = torch_reference.torch_module()
        info['torch'] = torch.__version__
        info['torch_threads'] = torch.get_num_threads()
    return info


# ---------------------------------------------------------------------------- timing

def interleaved(cases, rounds=3, window=2, warmup=1):
    """Time ``cases`` ({name: (step, images_per_step)}) in interleaved windows.

    Each case first runs ``warmup`` steps; then, for each of ``rounds`` rounds, every case in
    turn runs ``window`` steps (a step returns once its work is finished). Returns
    ``{name: [images/s of each round]}``.
    """
    for step, _ in cases.values():
        for _ in range(warmup):
            step()
    rates = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (step, images) in cases.items():
            start = time.perf_counter()
            for _ in range(window):
                step()
            rates[name].append(window * images / (time.perf_counter() - start))
    return rates


def _median_ratio(rates, num, den):
    if num not in rates or den not in rates:
        return None
    return statistics.median(a / b for a, b in zip(rates[num], rates[den]))


# ---------------------------------------------------------------------------- MXNet cases

def _batch(batch_size, image_size, num_classes, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.uniform(size=(batch_size, 3, image_size, image_size)).astype('float32')
    y = rng.randint(0, num_classes, size=batch_size).astype('float32')
    return X, y


def mx_train_case(mode, num_layers=18, batch_size=32, image_size=112, num_classes=300,
                  emb_size=256, ctx=None):
    """A training step of ``mode`` (see the module notes) -> ``step()`` (waits for the result)."""
    from . import training
    ctx = as_contexts(ctx)
    fast = mode in ('mx_default', 'mx_amp')
    net = TrainBlock(num_layers, emb_size, num_classes, num_classes <= 20000, fast=fast)
    net.collect_params().reset_ctx(ctx)
    if mode == 'mx_amp':
        set_compute_dtype(net, 'bfloat16')
    if mode != 'mx_imperative':
        net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': LR, 'wd': WD})
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    X, y = _batch(batch_size, image_size, num_classes)
    X, y = mnp.array(X), mnp.array(y)

    def step():
        training.data_parallel_step(net, loss, ctx, X, y)  # what train_ch_facerec runs per batch
        trainer.step(batch_size)
        mx.nd.waitall()
    return step


def _trained_test_net(num_layers, emb_size, image_size, fast, ctx, seed=0):
    """A TestBlock whose BatchNorm statistics and slopes are not the initial 0/1/0.25."""
    train = TrainBlock(num_layers, emb_size, 10, False, fast=fast)
    train.collect_params().reset_ctx(ctx)
    X, y = _batch(4, image_size, 10, seed)
    with autograd.record():
        train(mnp.array(X, ctx=ctx), mnp.array(y, ctx=ctx))
    rng = np.random.RandomState(seed)
    for name, param in train.collect_params().items():
        value = param.data().asnumpy()
        if name.endswith('alpha'):
            value = rng.uniform(-0.2, 0.8, size=value.shape)
        elif name.endswith(('running_mean', 'beta')):
            value = rng.normal(0, 0.1, size=value.shape)
        elif name.endswith(('running_var', 'gamma')):
            value = rng.uniform(0.5, 1.5, size=value.shape)
        param.set_data(mnp.array(value.astype('float32'), ctx=ctx))
    return TestBlock(num_layers, emb_size, False, fast=fast, params=train.collect_params())


def mx_infer_case(mode, num_layers=18, batch_size=64, image_size=112, emb_size=256, ctx=None,
                  net=None):
    """Embeddings of one batch in predict mode -> ``(step, net)``; ``step()`` returns them
    as numpy. ``net`` (a TestBlock) defaults to one with random parameters."""
    ctx = as_contexts(ctx)[0]
    if net is None:
        net = _trained_test_net(num_layers, emb_size, image_size,
                                mode in ('mx_default', 'mx_fast', 'mx_fast_amp'), ctx)
    if mode in ('mx_hybridized', 'mx_default'):
        net.hybridize(static_alloc=True, static_shape=True)
    elif mode in ('mx_fast', 'mx_fast_amp'):
        net = inference_net(net, (batch_size, 3, image_size, image_size), ctx=ctx,
                            dtype='bfloat16' if mode == 'mx_fast_amp' else 'float32')
    X = mnp.array(_batch(batch_size, image_size, 1)[0], ctx=ctx)

    def step():
        with autograd.predict_mode():
            return net(X).asnumpy()
    return step, net


# ---------------------------------------------------------------------------- data loader

def _face_like(rng, image_size):
    """A smooth random image (blurred blobs on a gradient), BGR uint8: JPEG-compressible like a
    face crop, unlike white noise."""
    import cv2
    h = w = image_size
    low = rng.uniform(0, 255, size=(6, 6, 3)).astype('float32')
    img = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(6):
        center = (int(rng.randint(0, w)), int(rng.randint(0, h)))
        axes = (int(rng.randint(4, w // 3)), int(rng.randint(4, h // 3)))
        color = [float(v) for v in rng.uniform(0, 255, size=3)]
        cv2.ellipse(img, center, axes, float(rng.uniform(0, 180)), 0, 360, color, -1)
    img = cv2.GaussianBlur(img, (5, 5), 1.5) + rng.normal(0, 4, size=img.shape)
    return np.clip(img, 0, 255).astype('uint8')


def make_rec_dataset(folder, num_images=2048, image_size=112, num_classes=64, quality=95,
                     seed=0):
    """A face dataset folder with ``train.rec``/``train.idx`` of ``num_images`` random
    ``image_size`` JPEGs and ``property``; returns the folder."""
    import cv2
    from ..data.datasets import write_property
    from ..data.recordio import write_face_rec
    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(seed)
    labels = sorted(int(v) for v in rng.randint(0, num_classes, size=num_images))

    def samples():
        for label in labels:
            ok, buf = cv2.imencode('.jpg', _face_like(rng, image_size),
                                   [cv2.IMWRITE_JPEG_QUALITY, quality])
            assert ok
            yield label, buf.tobytes()
    count = write_face_rec(os.path.join(folder, 'train.rec'), samples())
    write_property(folder, num_classes, (image_size, image_size), count)
    return folder


def loader_throughput(data_dir, batch_size=32, num_workers=2, max_batches=None, epochs=1,
                      augment='flip'):
    """Images/s of iterating ``load_data_face_rec(data_dir)`` (decode, augment with the preset
    ``augment``, batch), best of ``epochs`` passes (the first also warms the file cache)."""
    from ..data.augment import AUGMENT_PRESETS
    from ..data.datasets import load_data_face_rec
    loader, _ = load_data_face_rec(data_dir, [], batch_size, num_workers=num_workers,
                                   augment=AUGMENT_PRESETS[augment], seed=0)
    best = 0.0
    for _ in range(epochs):
        images, start = 0, time.perf_counter()
        for i, (X, _) in enumerate(loader):
            images += X.shape[0]
            if max_batches and i + 1 >= max_batches:
                break
        X.wait_to_read()
        best = max(best, images / (time.perf_counter() - start))
    return best


# ---------------------------------------------------------------------------- the report

def _train_step(name, batch_size, num_classes, shape):
    if name.startswith('torch'):
        return torch_reference.train_case(name != 'torch_nchw', 'bf16' in name,
                                          batch_size=batch_size, num_classes=num_classes,
                                          **shape)
    return mx_train_case(name, batch_size=batch_size, num_classes=num_classes, **shape)


def memory_case(name, batch_size=32, num_classes=300, num_layers=18, image_size=112,
                emb_size=256, steps=3):
    """Peak resident memory (MB) a training step of case ``name`` adds to a fresh process:
    ``VmHWM`` after ``steps`` steps minus ``VmRSS`` once the libraries are loaded (Linux)."""
    import json
    import subprocess
    import sys
    code = ('import json, gluon_arcface.train.benchmark as b; print(json.dumps(b._memory_child(%r, '
            '%d, %d, %d, %d, %d, %d)))' % (name, batch_size, num_classes, num_layers, image_size,
                                          emb_size, steps))
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=1800)
    if out.returncode:
        raise RuntimeError('memory case %s failed: %s' % (name, out.stderr[-500:]))
    return json.loads(out.stdout.strip().splitlines()[-1])


def _status_mb(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError('no %s in /proc/self/status' % field)


def _memory_child(name, batch_size, num_classes, num_layers, image_size, emb_size, steps):
    if name.startswith('torch'):
        torch_reference.torch_module()  # load torch before the baseline
    base = _status_mb('VmRSS')
    step = _train_step(name, batch_size, num_classes, dict(num_layers=num_layers,
                                                           image_size=image_size,
                                                           emb_size=emb_size))
    for _ in range(steps):
        step()
    return _status_mb('VmHWM') - base


# ---------------------------------------------------------------------------- RecordIO index

def _sparse_rec(folder, num_records, stride):
    """A headerless ``train.rec`` + ``train.idx`` of ``num_records`` records, keys 0, 1, ...
    ``stride`` bytes apart, as far as opening them reads: the .idx in full, the .rec a sparse file
    of the full size (``os.truncate``) with real records only at the first offset (the record
    FaceRecordDataset reads to tell the layout) and the last (the one RecordReader checks ends
    the file). Returns the .rec path."""
    import struct
    from ..data.recordio import RECORD_MAGIC, pack_record
    rec, idx = os.path.join(folder, 'train.rec'), os.path.join(folder, 'train.idx')
    with open(idx, 'w') as f:
        for lo in range(0, num_records, 100000):
            f.write(''.join(['%d\t%d\n' % (key, key * stride)
                             for key in range(lo, min(num_records, lo + 100000))]))
    payload = pack_record(0.0, b'\xff\xd8' + bytes(62))  # flag 0: an image, no header record
    record = (struct.pack('<II', RECORD_MAGIC, len(payload)) + payload
              + bytes(-len(payload) % 4))
    assert stride >= len(record) and stride % 4 == 0
    last = (num_records - 1) * stride
    with open(rec, 'wb'):
        pass
    os.truncate(rec, last + len(record))
    fd = os.open(rec, os.O_WRONLY)
    try:
        os.pwrite(fd, record, 0)
        os.pwrite(fd, record, last)
    finally:
        os.close(fd)
    return rec


def index_open(num_records=5_800_000, stride=6000):
    """Time and memory of opening a RecordIO index of ``num_records`` records (MS1M has 5.8
    million): ``FaceRecordDataset`` (with its ``RecordReader``) on a headerless .rec whose records
    are ``stride`` bytes apart (about a 112x112 JPEG; a sparse file), in a fresh process.

    Returns dict(records, seconds, added_mb: VmRSS after minus before, peak_mb: VmHWM during the
    opening minus VmRSS before, when Linux lets the peak be reset, idx_mb: size of the .idx). The
    .idx has just been written, so it is read from the page cache.
    """
    import json
    import subprocess
    import sys
    with tempfile.TemporaryDirectory(prefix='gaf-index-') as tmp:
        rec = _sparse_rec(tmp, num_records, stride)
        idx_mb = os.path.getsize(os.path.splitext(rec)[0] + '.idx') / 2.0 ** 20
        code = ('import json, gluon_arcface.train.benchmark as b; '
                'print(json.dumps(b._index_open_child(%r)))' % rec)
        out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                             timeout=1800)
    if out.returncode:
        raise RuntimeError('opening the index failed: %s' % out.stderr[-500:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result['idx_mb'] = idx_mb
    return result


def _index_open_child(rec_path):
    from ..data.datasets import FaceRecordDataset
    base = _status_mb('VmRSS')
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # resets VmHWM to the current resident memory
        peak = True
    except OSError:
        peak = False
    start = time.perf_counter()
    ds = FaceRecordDataset(rec_path)
    seconds = time.perf_counter() - start
    result = dict(records=len(ds), seconds=seconds, added_mb=_status_mb('VmRSS') - base)
    if peak:
        result['peak_mb'] = _status_mb('VmHWM') - base
    return result


def run_benchmark(num_layers=18, batch_size=32, image_size=112, num_classes=300, emb_size=256,
                  infer_batch_size=64, rounds=3, window=2, train_cases=TRAIN_CASES,
                  infer_cases=INFER_CASES, memory_cases=MEMORY_CASES, loader=True,
                  loader_images=2048, loader_workers=None, data_dir=None, threads=None,
                  log=print, index_records=None):
    """Measure everything; returns a dict (see ``format_report``).

    ``threads``: PyTorch's intra-op threads (default: as many as MXNet's). MXNet's OpenMP
    threads are fixed when it loads (the package's thread policy; scripts/benchmark.py
    --threads sets both). ``loader_workers``: decoding threads (default: what training uses,
    ``threads.decoding_workers``). The loader is timed with the chapter's flip and with the
    'standard' augmentation. ``index_records``: also time opening a RecordIO index of that many
    records (:func:`index_open`; None skips it).
    """
    from ..runtime.threads import decoding_workers
    torch_reference.set_threads(threads)
    use_torch = torch_reference.available()
    result = dict(config=dict(num_layers=num_layers, batch_size=batch_size,
                              image_size=image_size, num_classes=num_classes,
                              emb_size=emb_size, infer_batch_size=infer_batch_size,
                              rounds=rounds, window=window),
                  machine=machine_info(), skipped=[])

    def keep(names):
        out = []
        for name in names:
            if name.startswith('torch') and not use_torch:
                result['skipped'].append(name + ' (PyTorch not installed)')
            else:
                out.append(name)
        return out

    train_cases, infer_cases = keep(train_cases or ()), keep(infer_cases or ())
    memory_cases = keep(memory_cases or ())
    shape = dict(num_layers=num_layers, image_size=image_size, emb_size=emb_size)
    if train_cases:
        log('training: FaceResNet-%d, batch %d, %dx%d, %d classes: %s'
            % (num_layers, batch_size, image_size, image_size, num_classes,
               ', '.join(train_cases)))
        cases = {name: (_train_step(name, batch_size, num_classes, shape), batch_size)
                 for name in train_cases}
        result['train'] = interleaved(cases, rounds, window)
        del cases
    if infer_cases:
        log('inference: batch %d: %s' % (infer_batch_size, ', '.join(infer_cases)))
        cases = {}
        for name in infer_cases:
            if name.startswith('torch'):
                step = torch_reference.infer_case(True, 'bf16' in name,
                                                  batch_size=infer_batch_size, **shape)
            else:
                step, _ = mx_infer_case(name, batch_size=infer_batch_size, **shape)
            cases[name] = (step, infer_batch_size)
        result['infer'] = interleaved(cases, rounds, window)
        del cases
    if memory_cases:
        log('memory: peak resident memory of a training step, each case in a fresh process: %s'
            % ', '.join(memory_cases))
        result['memory'] = {name: memory_case(name, batch_size, num_classes, **shape)
                            for name in memory_cases}
    if loader:
        workers = loader_workers or decoding_workers()
        tmp = None
        if data_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix='gaf-bench-')
            log('loader: writing %d %dx%d JPEGs into %s' % (loader_images, image_size,
                                                            image_size, tmp.name))
            data_dir = make_rec_dataset(tmp.name, loader_images, image_size)
        try:
            rates = {augment: loader_throughput(data_dir, batch_size, workers, epochs=2,
                                                augment=augment)
                     for augment in ('flip', 'standard')}
        finally:
            if tmp is not None:
                tmp.cleanup()
        size = read_facerec_meta(data_dir)[0] if tmp is None else (image_size, image_size)
        result['loader'] = dict(images_per_sec=rates, data_dir=None if tmp else data_dir,
                                workers=workers, image_size=list(size))
    if index_records:
        log('index: opening a RecordIO index of %d records (FaceRecordDataset), in a fresh '
            'process' % index_records)
        result['index_open'] = index_open(index_records)
    result['machine']['load_average_after'] = machine_info()['load_average']
    return result


def summarize(result):
    """Medians and ratios of a ``run_benchmark`` result."""
    out = {}
    for part in ('train', 'infer'):
        rates = result.get(part)
        if not rates:
            continue
        out[part] = {name: statistics.median(v) for name, v in rates.items()}
    train, infer = result.get('train') or {}, result.get('infer') or {}
    ratios = {}
    for num, den in [('mx_default', 'torch_channels_last'), ('mx_default', 'torch_nchw'),
                     ('mx_amp', 'torch_channels_last'), ('mx_amp', 'torch_bf16_channels_last'),
                     ('mx_amp', 'mx_default'),
                     ('torch_bf16_channels_last', 'torch_channels_last'),
                     ('mx_default', 'mx_hybridized'), ('mx_default', 'mx_imperative'),
                     ('mx_hybridized', 'mx_imperative')]:
        r = _median_ratio(train, num, den)
        if r is not None:
            ratios['train %s / %s' % (num, den)] = r
    for num, den in [('mx_fast', 'mx_imperative'), ('mx_fast', 'mx_hybridized'),
                     ('mx_fast', 'mx_default'), ('mx_fast', 'torch_channels_last'),
                     ('mx_fast_amp', 'torch_channels_last'), ('mx_fast_amp', 'mx_fast'),
                     ('mx_fast_amp', 'torch_bf16_channels_last')]:
        r = _median_ratio(infer, num, den)
        if r is not None:
            ratios['inference %s / %s' % (num, den)] = r
    if 'loader' in result and 'train' in out:
        best = max(out['train'].get(n, 0) for n in out['train'] if n.startswith('mx'))
        for augment, rate in result['loader']['images_per_sec'].items():
            ratios['loader (%s) / training (mx_default)' % augment] = (
                rate / out['train'].get('mx_default', best))
    out['ratios'] = ratios
    return out


def format_report(result):
    """A markdown report of a ``run_benchmark`` result."""
    s = summarize(result)
    c, m = result['config'], result['machine']
    lines = ['FaceResNet-%d, %dx%d, emb %d; training batch %d, %d classes (ArcFace, SGD); '
             'inference batch %d; median of %d interleaved rounds of %d steps'
             % (c['num_layers'], c['image_size'], c['image_size'], c['emb_size'],
                c['batch_size'], c['num_classes'], c['infer_batch_size'], c['rounds'],
                c['window']),
             *(['command: `%s`' % result['command']] if result.get('command') else []),
             'machine: %s, %s physical cores, mxnet %s (%s threads, %s)%s; load average '
             'before %s, after %s'
             % (describe_cpu(m['cpu'], m['avx512_bf16'], m['amx'], m.get('amx_used')),
                m['cores'], m['mxnet'], m['mxnet_threads'], m['threads_from'],
                ', torch %s (%s threads)' % (m['torch'], m['torch_threads'])
                if 'torch' in m else '', m['load_average'], m.get('load_average_after')),
             '', '| what | case | images/s |', '| --- | --- | ---: |']
    for part, title in (('train', 'training step'), ('infer', 'inference')):
        for name, rate in (s.get(part) or {}).items():
            lines.append('| %s | %s | %.1f |' % (title, name, rate))
    for name, mb in (result.get('memory') or {}).items():
        lines.append('| training step peak memory (MB) | %s | %.0f |' % (name, mb))
    if 'loader' in result:
        ld = result['loader']
        for augment, rate in ld['images_per_sec'].items():
            lines.append('| data loader | load_data_face_rec, augment %s, %d workers, %dx%d '
                         'JPEG .rec%s | %.0f |'
                         % ((augment, ld['workers']) + tuple(ld['image_size'])
                            + (' (%s)' % ld['data_dir'] if ld['data_dir'] else '', rate)))
    if 'index_open' in result:
        ix = result['index_open']
        lines.append('| open a RecordIO index | %d records | %.2f s, %.0f MB |'
                     % (ix['records'], ix['seconds'], ix['added_mb']))
    if s['ratios']:
        lines += ['', '| ratio | value |', '| --- | ---: |']
        lines += ['| %s | %.2f |' % (k, v) for k, v in s['ratios'].items()]
    for name in result['skipped']:
        lines.append('skipped: %s' % name)
    return '\n'.join(lines)
