"""The command-line training recipe behind ``scripts/train.py``: data, network, trainer,
training, final verification, and the files a run leaves in its output folder.

Output folder: ``train.log``, ``config.json``, ``metrics.json``, ``curves.png``, ``roc.png``,
``checkpoints/`` (per epoch, best, resume state) and ``model/`` (the exported embedding network).
"""
import os
import sys
import time

import mxnet as mx
from mxnet import gluon

from . import checkpoint as ckpt
from .datasets import load_data_face_rec, read_facerec_meta
from .distributed import WorkerGroup, create_kvstore, create_trainer
from .errors import ConfigError, DownloadError, GluonArcFaceError
from .hub import download_extract
from .inference import export_embedding_net
from .margin import MARGIN_PRESETS, SoftmaxBlock
from .model import TrainBlock
from .parallel import FeatBlock, split_head, train_ch_facerec_parall
from .plotting import plot_history
from .training import make_test_net, train_ch_facerec
from .verification import format_table, plot_roc, verify

__all__ = ['parse_ctx', 'margin_settings', 'resolve_data_dir', 'fit', 'main_guard', 'DEFAULTS']

SYNTHETIC_VAL = 'synthetic_val'  # the verification set of faces-synthetic

# The chapter's settings.
DEFAULTS = dict(dataset='faces-casia-ultrasmall', val_targets=('lfw_small',), num_layers=18,
                emb_size=256, batch_size=512, lr=0.1, wd=5e-4, momentum=0.0, epochs=5,
                loss='arcface', margin_s=64.0)


def parse_ctx(spec=None):
    """'cpu', 'cpu:0,cpu:1', 'gpu:0,gpu:1' or None (all GPUs, else the CPU) -> list of Contexts."""
    if not spec:
        n = mx.context.num_gpus()
        return [mx.gpu(i) for i in range(n)] if n else [mx.cpu()]
    out = []
    for item in spec.split(','):
        kind, _, index = item.strip().partition(':')
        if kind not in ('cpu', 'gpu') or (index and not index.isdigit()):
            raise ConfigError('bad context %r: expected cpu, cpu:N or gpu:N (comma separated)'
                             % item)
        out.append(getattr(mx, kind)(int(index or 0)))
    return out


def margin_settings(loss='arcface', margin_s=64.0, margin_m=None, margin_a=None, margin_b=None):
    """ArcMarginBlock keyword arguments: the preset of ``loss``, overridden by explicit values.

    ``loss='softmax'`` returns None (a plain fully connected head).
    """
    if loss == 'softmax':
        return None
    if loss not in MARGIN_PRESETS:
        raise ConfigError('unknown loss %r: expected one of %s or softmax'
                         % (loss, ', '.join(sorted(MARGIN_PRESETS))))
    out = dict(MARGIN_PRESETS[loss], margin_s=margin_s)
    for key, value in (('margin_m', margin_m), ('margin_a', margin_a), ('margin_b', margin_b)):
        if value is not None:
            out[key] = value
    return out


class _Log:
    """print() to the console and to ``train.log``."""

    def __init__(self, path, enabled=True):
        self.path, self.enabled = path, enabled

    def __call__(self, *parts):
        if not self.enabled:
            return
        line = ' '.join(str(p) for p in parts)
        print(line, flush=True)
        with open(self.path, 'a') as f:
            f.write(time.strftime('%Y-%m-%d %H:%M:%S ') + line + '\n')


def resolve_data_dir(dataset=None, data_dir=None):
    """A folder with property/train.rec/... from ``data_dir`` or the hub name ``dataset``."""
    if data_dir:
        if not os.path.isdir(data_dir):
            raise FileNotFoundError('--data-dir %s: no such folder' % data_dir)
        return data_dir
    try:
        return download_extract(dataset)
    except DownloadError as e:
        raise DownloadError('%s\nOn the command line: --dataset faces-synthetic --val-targets '
                            '%s (generated offline), or --data-dir DIR for your own data.'
                            % (e, SYNTHETIC_VAL)) from None


def fit(output, dataset=DEFAULTS['dataset'], data_dir=None, val_targets=DEFAULTS['val_targets'],
        num_layers=18, emb_size=256, batch_size=512, lr=0.1, wd=5e-4, momentum=0.0, epochs=5,
        loss='arcface', margin_s=64.0, margin_m=None, margin_a=None, margin_b=None,
        lr_steps=(), ctx=None, verify_every=1, resume=False, num_workers=2, seed=None,
        kvstore='device', model_parallel=False, skip_bad=False, export=True, progress=True):
    """Train a FaceResNet with a margin head as the chapter does and write a run folder.

    ``batch_size`` is the global batch: with a dist kvstore each of the N workers (started by
    ``gaf.launch``) reads batches of batch_size / N from its 1/N of the images, and only rank 0
    writes to ``output``. ``model_parallel`` splits fc7 over the devices of ``ctx``
    (``train_ch_facerec_parall``), on one machine. ``skip_bad`` replaces undecodable images by
    the next good one and lists them in train.log and metrics.json instead of stopping.

    Returns the metrics dict also written to ``output/metrics.json``:
    ``{'epochs': [...], 'verification': {target: {...}}}``.
    """
    ctx = ctx if isinstance(ctx, list) else parse_ctx(ctx)
    kv = create_kvstore(kvstore)
    group = WorkerGroup(kv)
    rank, num_workers_kv, is_master = group.rank, group.num_workers, group.is_master
    if batch_size % num_workers_kv:
        raise ConfigError('batch size %d: expected a multiple of the number of workers (%d); it '
                         'is the global batch, split over the workers'
                         % (batch_size, num_workers_kv))
    if model_parallel and group.distributed:
        raise ConfigError('model_parallel splits fc7 over the devices of one machine; it does not '
                         'combine with kvstore %s' % kvstore)
    if is_master:
        os.makedirs(output, exist_ok=True)
    log = _Log(os.path.join(output, 'train.log'), enabled=is_master)
    if seed is not None:
        mx.random.seed(seed + rank)
        import numpy as onp
        import random
        onp.random.seed(seed + rank)
        random.seed(seed + rank)
    data_dir = resolve_data_dir(dataset, data_dir)
    image_size, num_classes = read_facerec_meta(data_dir)
    loader, val_set = load_data_face_rec(
        data_dir, list(val_targets), batch_size // num_workers_kv, num_workers=num_workers,
        num_parts=num_workers_kv, part_index=rank, seed=seed, skip_bad=skip_bad)
    use_dropout = num_classes <= 20000  # as in the chapter
    margin = margin_settings(loss, margin_s, margin_m, margin_a, margin_b)
    config = dict(data_dir=data_dir, image_size=list(image_size), num_classes=num_classes,
                  images=loader.dataset_info['images'], num_layers=num_layers,
                  emb_size=emb_size, use_dropout=use_dropout, batch_size=batch_size, lr=lr,
                  wd=wd, momentum=momentum, epochs=epochs, loss=loss, margin=margin,
                  lr_steps=list(lr_steps or ()), ctx=[str(c) for c in ctx],
                  kvstore=kvstore, workers=num_workers_kv, model_parallel=model_parallel,
                  skip_bad=skip_bad, seed=seed)
    if is_master:
        ckpt.write_json(os.path.join(output, 'config.json'), config)
    log('data: %s (%d images, %d identities, %dx%d); verification: %s'
        % (data_dir, config['images'], num_classes, image_size[0], image_size[1],
           ', '.join(val_targets) or 'none'))
    log('model: FaceResNet-%d, %d-d embedding, %s head%s%s; devices: %s%s'
        % (num_layers, emb_size, loss, ' %s' % margin if margin else '',
           ' split over the devices' if model_parallel else '', ', '.join(config['ctx']),
           '; %d workers (%s), %d images per worker and step'
           % (num_workers_kv, kvstore, batch_size // num_workers_kv) if group.distributed else ''))

    options = dict(val_set=val_set, verify_every=verify_every, lr_steps=lr_steps,
                   checkpoint_dir=os.path.join(output, 'checkpoints'), resume=resume,
                   progress=progress and is_master, log=log, is_master=is_master, animator=False)
    if model_parallel:
        net = FeatBlock(num_layers, emb_size, use_dropout)
        net.collect_params().reset_ctx(ctx)
        cls_nets = split_head(emb_size, num_classes, ctx, margin, softmax=margin is None)
        history = train_ch_facerec_parall(net, cls_nets, loader, epochs, ctx, lr=lr, wd=wd,
                                          momentum=momentum, **options)
    else:
        head = SoftmaxBlock(emb_size, num_classes) if margin is None else None
        net = TrainBlock(num_layers, emb_size, num_classes, use_dropout, margin=margin, head=head)
        net.collect_params().reset_ctx(ctx)
        optimizer = {'learning_rate': lr, 'wd': wd}
        if momentum:
            optimizer['momentum'] = momentum
        trainer = create_trainer(net.collect_params(), 'sgd', optimizer, kv)
        history = train_ch_facerec(net, loader, gluon.loss.SoftmaxCrossEntropyLoss(), trainer,
                                   epochs, ctx, **options)

    metrics = dict(epochs=history['epochs'], verification={})
    if not is_master:
        return metrics
    plot_history(history, os.path.join(output, 'curves.png'), title='FaceResNet-%d, %s'
                 % (num_layers, loss))
    test_net = make_test_net(net)
    test_net.hybridize(static_alloc=True, static_shape=True)
    results = {}
    for target, data_set in val_set.items():
        res = verify(data_set, test_net, ctx, batch_size=batch_size)
        results[target] = res
        metrics['verification'][target] = {
            'accuracy': res.accuracy, 'std': res.std, 'threshold': res.threshold,
            'cos_threshold': res.cos_threshold,
            'best_threshold_accuracy': res.best_threshold_accuracy,
            'best_threshold': res.best_threshold, 'xnorm': res.xnorm,
            'tar_at_far_1e-3': res.tar_at_far, 'num_pairs': res.num_pairs}
    if results:
        plot_roc(results, os.path.join(output, 'roc.png'),
                 title='FaceResNet-%d, %s' % (num_layers, loss))
    metrics['skipped_images'] = [s._asdict() for s in getattr(loader, 'skipped', [])]
    ckpt.write_json(os.path.join(output, 'metrics.json'), metrics)
    if export:
        prefix = os.path.join(output, 'model', 'faceresnet%d' % num_layers)
        export_embedding_net(make_test_net(net), prefix, image_size)
        ckpt.write_json(os.path.join(output, 'model', 'model.json'), dict(
            image_size=list(image_size), emb_size=emb_size, num_layers=num_layers,
            cos_threshold={t: r.cos_threshold for t, r in results.items()},
            input='RGB float32 (N, 3, H, W) in [0, 1]'))
        log('exported the embedding network to %s-symbol.json / -0000.params' % prefix)
    if results:
        log('\n' + format_table(results))
    log('wrote %s' % ', '.join(os.path.join(output, f) for f in
                               ('metrics.json', 'curves.png', 'roc.png', 'train.log')))
    return metrics


def main_guard(func):
    """Run ``func``; show the package's errors as one clear line (exit 1), Ctrl-C as exit 130."""
    try:
        return func()
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130
    except (GluonArcFaceError, FileNotFoundError) as e:
        print('error: %s' % e, file=sys.stderr)
        return 1
