"""The command-line training recipe behind ``scripts/train.py``: data, network, trainer,
training, final verification, and the files a run leaves in its output folder.

Output folder: ``train.log``, ``config.json``, ``metrics.json``, ``curves.png``, ``roc.png``,
``checkpoints/`` (per epoch, best, resume state) and ``model/`` (the exported embedding network).
"""
import dataclasses
import os
import random

import numpy as np

from ..runtime import _mxnet  # noqa: F401  (NumPy semantics, first)
import mxnet as mx
from mxnet import gluon

from ..models import checkpoint as ckpt
from ..data.augment import PROBABILITIES
from ..runtime.cli import log_to_file
from .config import SYNTHETIC_VAL, TrainConfig
from ..data.datasets import load_data_face_rec, load_pairs, read_facerec_meta
from ..runtime.devices import as_contexts, available_memory
from .distributed import WorkerGroup, create_kvstore, create_trainer
from ..runtime.errors import ConfigError, DownloadError
from ..runtime.fileio import write_json
from ..data.hub import download_extract
from ..models.interop import export_embedding_net, write_model_info
from ..nn.margin import SoftmaxBlock, margin_settings
from ..nn.model import CHAPTER_DROPOUT, TrainBlock, estimate_step_memory, set_compute_dtype
from .parallel import FeatBlock, split_head, train_ch_facerec_parall
from ..nn.precision import amp_dtype
from ..data.prepare import sample_pairs
from ..models.pretrained import load_backbone
from ..models.resolve import resolve_model
from ..eval.plotting import plot_history, plot_roc
from .schedules import TrainSchedule
from ..runtime.threads import decoding_workers, describe_cpu, disable_amx, thread_info
from .training import make_test_net, train_ch_facerec
from ..eval.verification import format_table, verify, verify_pixels

__all__ = ['resolve_data_dir', 'fit', 'prefer_zero_shot']

HOLDOUT = 'holdout'  # the verification set of held-out training identities
HOLDOUT_PAIRS = 600  # enough to rank epochs, verified in seconds


def _describe_schedule(c):
    lr = 'SGD%s lr %g%s, %s' % (
        ' (Nesterov)' if c.nesterov else '', c.lr,
        ' after %g warm-up epochs' % c.warmup_epochs if c.warmup_epochs else '',
        'cosine decay' if c.lr_schedule == 'cosine'
        else 'x0.1 after epochs %s' % ','.join(map(str, c.lr_steps)) if c.lr_steps
        else 'constant')
    parts = [lr, 'momentum %g, wd %g, batch %d, %d epochs' % (c.momentum, c.wd, c.batch_size,
                                                               c.epochs)]
    if c.margin_hold or c.margin_warmup:
        parts.append('margin%s up from 0 over %g epochs' % (
            ' 0 for %g epochs, then' % c.margin_hold if c.margin_hold else '', c.margin_warmup))
    if c.freeze_epochs or c.backbone_lr_mult != 1:
        parts.append('backbone frozen %g epochs, then lr x%g' % (c.freeze_epochs,
                                                                 c.backbone_lr_mult))
    return '; '.join(parts)


def _describe_augment(c, augment):
    if not augment.active:
        return 'none'
    ops = ['%s %g' % (name, getattr(augment, name)) for name in PROBABILITIES
           if getattr(augment, name)]
    return '%s (%s)' % (c.augment, ', '.join(ops))


def _check_memory(c, ctx, image_size, num_classes, num_workers, log):
    """Refuse (or warn about) a batch that the CPU's memory cannot hold, before the operating
    system kills the run: the chapter's batch of 512 at 112x112 needs about 33 GB."""
    if not all(x.device_type == 'cpu' for x in ctx):
        return
    available = available_memory()
    if available is None:
        return
    dtype = amp_dtype(ctx)[0] if c.amp else 'float32'
    batch = c.batch_size // num_workers
    need = estimate_step_memory(c.num_layers, image_size, batch, c.emb_size, num_classes, dtype)
    if need <= 0.8 * available:
        return
    fits = max(1, int(batch * 0.8 * available / need))
    text = ('a training step of FaceResNet-%d at %dx%d with a batch of %d needs about %.1f GB '
            'of memory (%s), and %.1f GB are available'
            % (c.num_layers, image_size[0], image_size[1], batch, need / 2 ** 30, dtype,
               available / 2 ** 30))
    advice = ('use --batch-size %d or less, --amp (bfloat16 halves it), or a smaller '
              '--image-size' % (fits * num_workers))
    if need > available:
        raise ConfigError('%s: %s' % (text, advice))
    log('warning: %s; if the run is killed, %s' % (text, advice))


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


def fit(config=None, **settings):
    """Train a FaceResNet with a margin head as the chapter does and write a run folder.

    ``config``: a :class:`~gluon_arcface.train.config.TrainConfig` (default: the chapter's
    settings); keyword arguments override its fields, e.g. ``fit(output='runs/a', epochs=2)``. See
    ``TrainConfig`` (or ``scripts/train.py --help``) for every setting.

    ``batch_size`` is the global batch: with a dist kvstore each of the N workers (started by
    ``gaf.launch``) reads batches of batch_size / N from its 1/N of the images, and only rank 0
    writes to ``output``. ``model_parallel`` splits fc7 over the devices of ``ctx``
    (``train_ch_facerec_parall``), on one machine.

    Returns the metrics dict also written to ``output/metrics.json``:
    ``{'epochs': [...], 'verification': {target: {...}}}``.
    """
    config = config or TrainConfig()
    if settings:
        config = dataclasses.replace(config, **settings)
    return _fit(config)


def _fit(c):
    if c.amp:
        # Before oneDNN's first primitive (it reads its ISA limit once, then): here it covers
        # the command line, --resume of an amp run and Python callers alike.
        disable_amx()
    ctx = as_contexts(c.ctx)
    kv = create_kvstore(c.kvstore)
    group = WorkerGroup(kv)
    num_workers_kv, is_master = group.num_workers, group.is_master
    if c.batch_size % num_workers_kv:
        raise ConfigError('batch size %d: expected a multiple of the number of workers (%d); it '
                          'is the global batch, split over the workers'
                          % (c.batch_size, num_workers_kv))
    if c.model_parallel and group.distributed:
        raise ConfigError('model_parallel splits fc7 over the devices of one machine; it does not '
                          'combine with kvstore %s' % c.kvstore)
    if is_master:
        os.makedirs(c.output, exist_ok=True)
    with log_to_file(os.path.join(c.output, 'train.log'), enabled=is_master) as log:
        return _train(c, ctx, kv, group, log)


def _train(c, ctx, kv, group, log):
    rank, is_master = group.rank, group.is_master
    if c.seed is not None:
        mx.random.seed(c.seed + rank)
        np.random.seed(c.seed + rank)
        random.seed(c.seed + rank)
    data_dir = resolve_data_dir(c.dataset, c.data_dir)
    data_size, num_classes = read_facerec_meta(data_dir)
    image_size = tuple(c.image_size or data_size)
    _check_memory(c, ctx, image_size, num_classes, group.num_workers, log)
    num_workers = c.num_workers if c.num_workers is not None else decoding_workers(
        on_gpu=any(x.device_type == 'gpu' for x in ctx))
    augment = c.augment_settings()
    held = _holdout_identities(c, num_classes)
    loader, val_set = load_data_face_rec(
        data_dir, list(c.val_targets), c.batch_size // group.num_workers,
        num_workers=num_workers, num_parts=group.num_workers, part_index=rank, seed=c.seed,
        skip_bad=c.skip_bad, augment=augment, image_size=image_size, exclude_identities=held)
    if held:
        num_classes = loader.dataset_info['num_classes']
        val_set = dict(val_set, **{HOLDOUT: _holdout_set(loader, image_size, c.seed)})
    source = resolve_model(c.pretrained) if c.pretrained else None
    # A backbone other than FaceResNet: a named model, or a run fine-tuned from one.
    other = source.backbone if source is not None else None
    named = other is not None
    emb_size = _other_backbone_emb_size(c, other, log) if named else c.emb_size
    # The chapter: Dropout(0.4) when there are at most 20000 identities.
    use_dropout = c.dropout if c.dropout is not None else (
        CHAPTER_DROPOUT if num_classes <= 20000 and not named else 0.0)
    if named and use_dropout:
        raise ConfigError('--dropout applies to FaceResNet; %s has no dropout layer'
                          % c.pretrained)
    if named and c.amp:
        raise ConfigError('--amp runs a FaceResNet backbone in low precision; %s computes in '
                          'float32' % c.pretrained)
    if named and c.backbone_lr_mult > 0.01:
        # dlib's folded BatchNorm leaves its convolutions' gradients ~10x their weights: at
        # 0.1x the head's rate fine-tuning diverged on Yale B (docs/pretrained.md).
        log('warning: %s\'s backbone learns at %g x the head\'s rate; it is fine-tuned at 0.001 '
            '(--recipe finetune, or --backbone-lr-mult 0.001 --freeze-epochs 1): at 0.1 it '
            'diverged' % (other['backbone'], c.backbone_lr_mult))
    margin = margin_settings(c.loss, c.margin_s, c.margin_m, c.margin_a, c.margin_b,
                             num_classes)
    # A backbone from InsightFace keeps the input normalisation it was trained with.
    input_norm = source.input_norm if source is not None else None
    backbone = _other_backbone(other, image_size) if named else None
    system = thread_info(num_workers)
    resolved = dict(input_norm=list(input_norm) if input_norm else None,
                    data_dir=data_dir, data_size=list(data_size), image_size=list(image_size),
                    num_classes=num_classes, images=loader.dataset_info['images'],
                    dropout=use_dropout, margin=margin, augment=dataclasses.asdict(augment),
                    ctx=[str(x) for x in ctx], workers=group.num_workers,
                    holdout_identities=[int(i) for i in held],
                    backbone=backbone().describe() if backbone else None)
    epochs = resolved['epochs'] = c.epochs_for(loader.dataset_info['all_images'])
    if is_master:
        write_json(os.path.join(c.output, 'config.json'),
                   dict(settings=c.to_dict(), resolved=resolved, system=system))
    if epochs != c.epochs:
        log('epochs: %d instead of %d, so that %d epochs x %d images stay within max_samples '
            '%d' % (epochs, c.epochs, epochs, loader.dataset_info['all_images'], c.max_samples))
        c = dataclasses.replace(c, epochs=epochs)
    log('data: %s (%d images, %d identities, %dx%d%s); verification: %s'
        % (data_dir, resolved['images'], num_classes, data_size[0], data_size[1],
           ', trained at %dx%d' % image_size if image_size != tuple(data_size) else '',
           ', '.join(c.val_targets) or 'none'))
    log('model: %s, %d-d embedding, dropout %g, %s head%s%s; devices: %s%s'
        % (other['backbone'] if named else 'FaceResNet-%d' % c.num_layers, emb_size, use_dropout,
           c.loss, ' %s' % margin if margin else '',
           ' split over the devices' if c.model_parallel else '', ', '.join(resolved['ctx']),
           '; %d workers (%s), %d images per worker and step'
           % (group.num_workers, c.kvstore, c.batch_size // group.num_workers)
           if group.distributed else ''))
    log('training: %s; augmentation: %s' % (_describe_schedule(c), _describe_augment(c, augment)))
    log('threads: %d compute (%s), %d decoding; CPU: %s'
        % (system['compute_threads'], system['threads_from'], num_workers,
           describe_cpu(system['cpu_model'], system['avx512_bf16'], system['amx'],
                        system['onednn_amx'])))

    schedule = TrainSchedule(c.lr, c.epochs, c.lr_schedule, c.lr_steps,
                             warmup_epochs=c.warmup_epochs, margin_warmup=c.margin_warmup,
                             margin_hold=c.margin_hold, freeze_epochs=c.freeze_epochs,
                             backbone_lr_mult=c.backbone_lr_mult)
    # With held-out identities only they are verified during training (they choose the epoch);
    # the verification targets are scored once, at the end.
    during = {HOLDOUT: val_set[HOLDOUT]} if held else val_set
    options = dict(val_set=during, verify_every=c.verify_every, schedule=schedule,
                   checkpoint_dir=os.path.join(c.output, 'checkpoints'), resume=c.resume,
                   progress=c.progress and is_master, log=log, is_master=is_master,
                   animator=False)
    optimizer = 'nag' if c.nesterov else 'sgd'
    optimizer_params = {'learning_rate': c.lr, 'wd': c.wd}
    if c.momentum:
        optimizer_params['momentum'] = c.momentum
    if c.model_parallel:
        if named:
            raise ConfigError('--model-parallel splits the head of a FaceResNet; it does not '
                              'combine with --pretrained %s' % c.pretrained)
        net = FeatBlock(c.num_layers, c.emb_size, use_dropout, input_norm=input_norm)
        cls_nets = split_head(c.emb_size, num_classes, ctx, margin, softmax=margin is None)
    else:
        head = SoftmaxBlock(emb_size, num_classes) if margin is None else None
        net = TrainBlock(c.num_layers, emb_size, num_classes, use_dropout, margin=margin,
                         head=head, input_norm=input_norm, backbone=backbone)
    net.collect_params().reset_ctx(ctx)
    zero_shot = {}
    if c.pretrained and not (c.resume and ckpt.latest_checkpoint(options['checkpoint_dir'])):
        log('backbone from %s' % _load_pretrained(net, source))
        if is_master and val_set:  # what the model knew before training, for the final table
            zero_shot = _verify_all(val_set, make_test_net(net), ctx, c.batch_size, log,
                                    'zero-shot')
    options['amp'] = c.amp
    options['select_by'] = HOLDOUT if held else None
    if c.model_parallel:
        options.pop('select_by')
        history = train_ch_facerec_parall(net, cls_nets, loader, c.epochs, ctx, lr=c.lr,
                                          wd=c.wd, momentum=c.momentum, optimizer=optimizer,
                                          **options)
    else:
        trainer = create_trainer(net.collect_params(), optimizer, optimizer_params, kv,
                                 loss_scaling=c.amp and amp_dtype(ctx)[0] == 'float16')
        history = train_ch_facerec(net, loader, gluon.loss.SoftmaxCrossEntropyLoss(), trainer,
                                   c.epochs, ctx, **options)
    num_layers, loss, output, batch_size = c.num_layers, c.loss, c.output, c.batch_size
    metrics = dict(epochs=history['epochs'], verification={})
    if not is_master:
        return metrics
    name = other['backbone'] if named else 'FaceResNet-%d' % num_layers
    plot_history(history, os.path.join(output, 'curves.png'), title='%s, %s' % (name, loss))
    if held:
        metrics['kept'] = _keep_best(net, options['checkpoint_dir'], ctx, log)
        if HOLDOUT in zero_shot:
            metrics['kept'] = _keep_or_zero_shot(net, source, metrics['kept'], zero_shot[HOLDOUT],
                                                 val_set[HOLDOUT], ctx, batch_size, log,
                                                 options['checkpoint_dir'])
    test_net = make_test_net(net)
    if c.amp and amp_dtype(ctx)[0] != 'float32':
        set_compute_dtype(test_net, amp_dtype(ctx)[0])  # as verified during training
    test_net.hybridize(static_alloc=True, static_shape=True)
    results = {}
    pixels = {}
    for target, data_set in val_set.items():
        res = verify(data_set, test_net, ctx, batch_size=batch_size)
        results[target] = res
        pixels[target + ' (raw pixels)'] = baseline = verify_pixels(data_set)
        if target in zero_shot:
            pixels[target + ' (zero-shot)'] = zero_shot[target]
        metrics['verification'][target] = {
            'accuracy': res.accuracy, 'std': res.std, 'threshold': res.threshold,
            'cos_threshold': res.cos_threshold,
            'best_threshold_accuracy': res.best_threshold_accuracy,
            'best_threshold': res.best_threshold, 'xnorm': res.xnorm,
            'tar_at_far_1e-3': res.tar_at_far, 'num_pairs': res.num_pairs,
            'raw_pixels_accuracy': baseline.accuracy,
            'raw_pixels_tar_at_far_1e-3': baseline.tar_at_far}
        if target in zero_shot:
            metrics['verification'][target].update({
                'zero_shot_accuracy': zero_shot[target].accuracy,
                'zero_shot_tar_at_far_1e-3': zero_shot[target].tar_at_far})
    if results:
        plot_roc(dict(results, **pixels), os.path.join(output, 'roc.png'),
                 title='%s, %s' % (name, loss))
    metrics['skipped_images'] = [s._asdict() for s in getattr(loader, 'skipped', [])]
    write_json(os.path.join(output, 'metrics.json'), metrics)
    if c.export:
        prefix = os.path.join(output, 'model', other['backbone'] if named else
                              'faceresnet%d' % num_layers)
        export_embedding_net(make_test_net(net), prefix, image_size)
        write_model_info(os.path.dirname(prefix), image_size, emb_size, num_layers,
                         {t: r.cos_threshold for t, r in results.items()}, input_norm,
                         backbone=resolved['backbone'])
        log('exported the embedding network to %s-symbol.json / -0000.params' % prefix)
    if results:
        log('\n' + format_table(dict(results, **pixels)))
    written = ('metrics.json', 'curves.png') + (('roc.png',) if results else ()) + ('train.log',)
    log('wrote %s' % ', '.join(os.path.join(output, f) for f in written))
    return metrics


# ----------------------------------------------------------------------------- fine-tuning

def _holdout_identities(c, num_classes):
    """The class ids ``c.holdout`` leaves out of training (seeded, the same on every worker)."""
    if not c.holdout:
        return []
    count = max(2, int(round(c.holdout * num_classes)))
    if count > num_classes - 2:
        raise ConfigError('holdout %g of %d identities leaves fewer than 2 to train on'
                          % (c.holdout, num_classes))
    rng = np.random.RandomState(0 if c.seed is None else c.seed)
    return sorted(int(i) for i in rng.choice(num_classes, count, replace=False))


def _holdout_set(loader, image_size, seed):
    """Verification pairs among the held-out identities' images (at most HOLDOUT_PAIRS)."""
    held = loader.dataset_info['held_out']
    same = sum(len(items) * (len(items) - 1) // 2 for items in held.values())
    pairs = sample_pairs(held, min(HOLDOUT_PAIRS, 2 * same), seed=0 if seed is None else seed)
    items = [(held[a][i], held[b][j], same) for (a, i), (b, j), same in pairs]
    return load_pairs(loader.face_dataset, items, image_size)


def _other_backbone_emb_size(c, settings, log):
    size = settings['emb_size']
    if c.emb_size != size and c.emb_size != TrainConfig.emb_size:
        log('emb_size: %d, the size of %s (not %d)' % (size, settings['backbone'], c.emb_size))
    return size


def _other_backbone(settings, image_size):
    """A factory of a named model's network (``ModelSource.backbone``) for crops of
    ``image_size``, with the framing it was trained with."""
    import functools
    from ..nn.dlib_resnet import DlibResNet
    keys = ('geometry', 'chip_size', 'mean_rgb')
    return functools.partial(DlibResNet, input_size=image_size,
                             **{k: settings[k] for k in keys if k in settings})


def _load_pretrained(net, source):
    """Copy a pretrained backbone (a ModelSource) into ``net``; returns the file read."""
    from ..nn.dlib_resnet import convert_dat, load_weights
    if source.kind == 'named':
        load_weights(net, convert_dat(source.path))
        return '%s (%s)' % (source.spec, source.path)
    if source.backbone:  # a run fine-tuned from a named model: its checkpoint, else its export
        path = source.checkpoint or source.path
        load_weights(net, path)
        return path
    return load_backbone(net, source)


def _verify_all(val_set, test_net, ctx, batch_size, log, what):
    test_net.hybridize(static_alloc=True, static_shape=True)
    results = {t: verify(d, test_net, ctx, batch_size=batch_size) for t, d in val_set.items()}
    log('%s: %s' % (what, '  '.join('%s %.4f' % (t, r.accuracy) for t, r in results.items())))
    return results


def prefer_zero_shot(tuned, zero, num_folds=10, negatives=None):
    """Whether a fine-tuned network should give way to the pretrained one it started from,
    judged on the held-out identities' verification (two VerificationResults) -> ``(bool,
    reason)``. The pretrained network is kept unless the fine-tuned one's 10-fold accuracy
    gains more than the noise of that difference (the standard error sqrt(std_a^2 + std_b^2)
    / sqrt(folds)), and, where the held-out set can resolve its FAR (``negatives``: different
    pairs, at least 1 / FAR a fold), unless its TAR is lower by more than its own noise. (A
    held-out set of a few hundred pairs cannot: on Yale B its TAR at FAR 1e-3 fell 5.6 points
    while the target's rose from 38.5 to 95.9.)"""
    noise = float(np.hypot(tuned.std, zero.std) / np.sqrt(num_folds))
    gain = tuned.accuracy - zero.accuracy
    if gain <= noise:
        return True, ('held-out accuracy %+.2f points, within its noise (%.2f)'
                      % (100 * gain, 100 * noise))
    resolved = negatives is not None and negatives / num_folds >= 1 / tuned.far_target
    tar_noise = float(np.hypot(tuned.tar_std, zero.tar_std) / np.sqrt(num_folds))
    if resolved and tuned.tar_at_far < zero.tar_at_far - tar_noise:
        return True, ('held-out TAR at FAR %g %.3f, below the pretrained network\'s %.3f by '
                      'more than its noise (%.3f)' % (tuned.far_target, tuned.tar_at_far,
                                                     zero.tar_at_far, tar_noise))
    tar = ('TAR %.3f against %.3f' % (tuned.tar_at_far, zero.tar_at_far) if resolved else
           'TAR at FAR %g not judged: %d different pairs cannot resolve it'
           % (tuned.far_target, negatives or 0))
    return False, 'held-out accuracy %+.2f points (noise %.2f); %s' % (100 * gain, 100 * noise,
                                                                       tar)


def _keep_or_zero_shot(net, source, kept, zero, held_set, ctx, batch_size, log, checkpoint_dir):
    """After fine-tuning: the kept epoch, or the pretrained backbone back in ``net`` (and in
    ``best.params``, what ``--pretrained RUN`` starts from) when :func:`prefer_zero_shot` says
    so -> the ``kept`` record with the decision."""
    tuned = verify(held_set, make_test_net(net), ctx, batch_size=batch_size)
    back, reason = prefer_zero_shot(tuned, zero, negatives=int(np.sum(~np.asarray(
        held_set[1], bool))))
    if back:
        _load_pretrained(net, source)
        ckpt.save_best(checkpoint_dir, net, dict(epoch=0, accuracy=zero.accuracy,
                                                 zero_shot=True, reason=reason))
        log('kept the pretrained network (zero-shot): fine-tuning\'s %s' % reason)
    else:
        log('kept the fine-tuned network: %s' % reason)
    return dict(kept or {}, zero_shot_kept=back, reason=reason,
                holdout_tuned=dict(accuracy=tuned.accuracy, std=tuned.std,
                                   tar_at_far_1e_3=tuned.tar_at_far),
                holdout_zero_shot=dict(accuracy=zero.accuracy, std=zero.std,
                                       tar_at_far_1e_3=zero.tar_at_far))


def _keep_best(net, checkpoint_dir, ctx, log):
    """Load the epoch chosen on the held-out identities into ``net`` -> its best.json."""
    best = ckpt.read_best(checkpoint_dir)
    if best is None:
        log('no best epoch recorded: the last epoch is kept')
        return None
    ckpt.load_parameters(net, os.path.join(checkpoint_dir, best['params']), ctx=ctx)
    log('kept epoch %d (holdout %.4f)' % (best['epoch'], best['accuracy']))
    return best
