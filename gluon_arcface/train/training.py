"""The chapter's training loop, ``train_ch_facerec``, with data parallelism over devices.

Each batch is split over the contexts with ``gluon.utils.split_and_load``; every device runs
forward and backward on its shard (so BatchNorm and the TrainBlock's standardisation use
per-shard statistics) and one ``trainer.step`` applies the summed gradients.
"""
import functools
import math
import signal
import sys
import threading
import time

from ..runtime import _mxnet  # noqa: F401  (NumPy semantics, first)
import mxnet as mx
from mxnet import autograd, gluon

from ..models import checkpoint as ckpt
from .distributed import WorkerGroup
from ..runtime.devices import as_contexts
from ..runtime.errors import CheckpointError, TrainingDivergedError
from ..nn.margin import head_state
from ..nn.model import set_compute_dtype
from ..nn.precision import LossScale, amp_dtype
from .schedules import TrainSchedule

__all__ = ['train_ch_facerec', 'lr_at_epoch', 'forward_backward', 'data_parallel_step',
           'make_test_net', 'sync_aux_states']


def lr_at_epoch(base_lr, epoch, lr_steps=(), factor=0.1):
    """Learning rate for 0-based ``epoch``: ``base_lr`` times ``factor`` per step <= epoch (the
    chapter's schedule; :class:`~gluon_arcface.train.schedules.TrainSchedule` has the others)."""
    return TrainSchedule(base_lr, None, lr_steps=lr_steps, lr_factor=factor).lr(epoch)


def forward_backward(net, loss, X, y, ctx, loss_scale=1.0):
    """Split a batch over ``ctx``, run forward + backward on each device.

    Returns ``(losses, outputs, labels)``, one array per device; gradients (of the losses times
    ``loss_scale``, for float16 training) are left in the parameters for ``trainer.step``.
    """
    Xs = gluon.utils.split_and_load(X, ctx, batch_axis=0, even_split=False)
    ys = gluon.utils.split_and_load(y, ctx, batch_axis=0, even_split=False)
    with autograd.record():
        outs = [net(x, t) for x, t in zip(Xs, ys)]
        losses = [loss(o, t) for o, t in zip(outs, ys)]
        scaled = losses if loss_scale == 1.0 else [l * loss_scale for l in losses]
    autograd.backward(scaled)
    return losses, outs, ys


def data_parallel_step(net, loss, ctx, X, y, loss_scale=None):
    """train_ch_facerec's default batch step: ``forward_backward`` over ``ctx``, then, for a
    margin head with a dynamic AdaCos scale, the scale update from the batch's logits.

    Returns ``(summed loss, number of correct argmax predictions)`` as Python numbers.
    """
    losses, outs, ys = forward_backward(net, loss, X, y, ctx,
                                        loss_scale.scale if loss_scale else 1.0)
    head = getattr(net, 'margin_block', None)
    if getattr(head, 'adaptive_scale', False):  # dynamic AdaCos: the scale of the next step
        head.update_scale(outs, ys)
    return (sum(float(l.sum()) for l in losses),
            sum(int((o.argmax(axis=1).astype('int64') == t.astype('int64')).sum())
                for o, t in zip(outs, ys)))


def sync_aux_states(net):
    """Average parameters without gradient (BatchNorm running mean/var) over their devices.

    Each device updates its own copy from its own shards; without this, devices (and the saved
    checkpoint, which averages them) would give different embeddings for the same image.
    """
    for param in net.collect_params().values():
        if param.grad_req != 'null' or len(param.list_ctx()) < 2:
            continue
        try:
            copies = param.list_data()
        except RuntimeError:  # not initialised yet (deferred)
            continue
        mean = sum(c.copyto(mx.cpu()) for c in copies) / len(copies)
        for c in copies:  # not set_data: it resets a Trainer that updates on its kvstore
            c[:] = mean.as_in_ctx(c.ctx)  # ('device', several devices), dropping the momentum


def make_test_net(net):
    """A TestBlock sharing ``net``'s parameters (``net`` a gluon_arcface TrainBlock)."""
    from ..nn.model import TestBlock
    return TestBlock(net.num_layers, net.emb_size, net.use_dropout, params=net.collect_params(),
                     input_norm=getattr(net, 'input_norm', None),
                     backbone=getattr(net, 'backbone', None))


class _Interrupt:
    """Turns SIGINT into a flag checked between batches, so a checkpoint can be written."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True
        print('\ninterrupt: finishing this batch, then saving a checkpoint '
              '(Ctrl-C again to stop at once)', file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _progress(loader, epoch, num_epochs, show):
    if not show:
        return loader
    from tqdm.auto import tqdm
    return tqdm(loader, desc='epoch %d/%d' % (epoch, num_epochs), leave=False, mininterval=1.0,
                file=sys.stderr, unit='batch')


def _default_animator(num_epochs, verify):
    """d2l's live training plot, in Jupyter only (in a terminal it would print text)."""
    try:
        from IPython import get_ipython
        if get_ipython() is None or 'IPKernelApp' not in get_ipython().config:
            return None
        from d2l import mxnet as d2l
    except ImportError:
        return None
    legend = ['train loss', 'train acc'] + (['verification acc'] if verify else [])
    return d2l.Animator(xlabel='epoch', xlim=[1, max(num_epochs, 2)], legend=legend)


def train_ch_facerec(net, loader, loss, trainer, num_epochs, ctx, val_set=None, test_net=None,
                     verify_every=1, lr_steps=None, lr_factor=0.1, checkpoint_dir=None,
                     resume=False, keep_last=2, hybridize=True, progress=True, animator=None,
                     log=print, is_master=None, verify_batch_size=None, batch_step=None,
                     schedule=None, amp=False, select_by=None):
    """Train ``net`` for ``num_epochs`` epochs: the chapter's training loop, on several devices.

    The chapter's call ``train_ch_facerec(net, loader, loss, trainer, num_epochs, ctx)`` works
    as is. Each batch is split over ``ctx`` (``split_and_load``); one ``trainer.step`` applies
    the summed gradients. A NaN/inf loss raises TrainingDivergedError before the update is
    applied; Ctrl-C saves a checkpoint and raises KeyboardInterrupt.

    Parameters
    ----------
    net : gluon.Block
        Called as ``net(X, y) -> logits`` (N, num_classes), e.g. a TrainBlock.
    loader : iterable of (X, y)
        Batches: X (N, 3, H, W) float32 in [0, 1], y (N,) class ids (``load_data_face_rec``).
    loss : gluon.loss.Loss
        Per-sample loss of ``(logits, y)``, e.g. SoftmaxCrossEntropyLoss.
    trainer : gluon.Trainer
        Over ``net``'s parameters; with a dist kvstore, from ``gaf.create_trainer``: every worker
        starts from rank 0's parameters and dist_sync updates with the mean gradient over all
        workers' batches (``trainer.step(batch * workers)``).
    num_epochs : int
        Epochs to reach (a resumed run trains the remaining ones).
    ctx : Context, list of Contexts or str
        Devices (``devices.as_contexts``; None: where ``net``'s parameters are).
    val_set : dict, optional
        ``{target: (data_list, issame)}`` verified (10-fold accuracy) every ``verify_every``
        epochs and after the last one, with ``test_net`` (a TestBlock sharing ``net``'s
        parameters when omitted) and ``verify_batch_size`` images per batch.
    lr_steps, lr_factor : sequence of int, float
        The chapter's schedule: the LR times ``lr_factor`` from each 0-based epoch listed.
    schedule : schedules.TrainSchedule, optional
        Replaces ``lr_steps``: LR warm-up and cosine decay, margin warm-up, backbone freezing,
        applied before every step.
    checkpoint_dir : str, optional
        Parameters and trainer state after each epoch (the ``keep_last`` newest kept),
        ``best.params`` for the best mean verification accuracy (of ``select_by``'s target
        alone when given, e.g. a held-out part of the training identities).
    resume : bool or 'auto'
        Continue from ``checkpoint_dir``'s latest checkpoint ('auto': if there is one).
    amp : bool
        Mixed precision (``precision.amp_dtype``): bfloat16 on CPUs with AVX512-BF16 or AMX,
        float16 with dynamic loss scaling on GPUs (needs ``update_on_kvstore=False``).
    hybridize, progress, animator, log, is_master
        Hybridize ``net`` (static_alloc); a progress bar; d2l's live plot in Jupyter (False:
        none); the function lines go to; False for the non-reporting workers of a distributed
        run (default: rank 0 reports).
    batch_step : callable, optional
        ``batch_step(X, y) -> (summed loss, correct predictions)`` replacing the forward and
        backward pass (default: ``data_parallel_step``; the model-parallel head's own); given
        ``loss_scale=`` too with float16.

    Returns
    -------
    dict
        ``{'epochs': [{'epoch', 'loss', 'train_acc', 'samples_per_sec', 'seconds', 'lr',
        'margin_scale'?, 'margin_ramp'?, 'verification'?: {target: accuracy}}, ...]}``: mean
        loss and accuracy per sample, samples/s of the whole job, seconds of training.
    """
    ctx = as_contexts(ctx, net)
    # Distributed runs (dist_* kvstores): rank, shared start and checkpoint state.
    group = WorkerGroup.of(trainer)
    is_master = group.is_master if is_master is None else is_master
    states_trainer = group.checkpoint_trainer(trainer)
    precision = _mixed_precision(net, ctx, log) if amp else None
    loss_scale = LossScale() if precision == 'float16' else None
    batch_step = batch_step or functools.partial(data_parallel_step, net, loss, ctx)
    if loss_scale is not None:
        batch_step = functools.partial(batch_step, loss_scale=loss_scale)
    log = log if is_master else (lambda *a, **k: None)
    if hybridize and isinstance(net, gluon.HybridBlock):
        net.hybridize(static_alloc=True, static_shape=True)
    verify_targets = dict(val_set or {}) if is_master else {}
    if verify_targets and test_net is None:
        test_net = make_test_net(net)
    if verify_targets and precision:
        set_compute_dtype(test_net, precision)  # verification in the same precision
    if verify_targets and hybridize and isinstance(test_net, gluon.HybridBlock):
        test_net.hybridize(static_alloc=True, static_shape=True)
    if schedule is None:
        schedule = TrainSchedule(trainer.learning_rate, num_epochs, lr_steps=lr_steps,
                                 lr_factor=lr_factor)
    group.check_schedule(schedule)
    history, start_epoch, best = {'epochs': []}, 0, None
    if resume and checkpoint_dir:
        state = ckpt.latest_checkpoint(checkpoint_dir)
        group.check_same('resume_epoch', state['epoch'] if state else -1,
                         'the epoch to resume from in %s (-1: none)' % checkpoint_dir)
        if state is None and resume != 'auto':
            raise CheckpointError('%s: no checkpoint to resume from' % checkpoint_dir)
        if state is not None:
            state = ckpt.load_checkpoint(checkpoint_dir, net, states_trainer, ctx=ctx)
            history = state.get('history') or history
            start_epoch = state['epoch']
            schedule.base_lr = state.get('base_lr', schedule.base_lr)
            best = state.get('best_accuracy')
            log('resumed from %s after epoch %d' % (checkpoint_dir, start_epoch))
    if animator is None and progress:
        animator = _default_animator(num_epochs, bool(verify_targets))

    def save(epoch):
        if checkpoint_dir and is_master:
            ckpt.save_checkpoint(checkpoint_dir, epoch, net, states_trainer, history, keep_last,
                                 extra=dict(base_lr=schedule.base_lr, best_accuracy=best))

    reported_skips = 0
    with _Interrupt() as interrupt:
        steps = _steps_per_epoch(loader)
        for epoch in range(start_epoch, num_epochs):
            loss_sum, correct, seen, start = 0.0, 0, 0, time.time()
            for batch, (X, y) in enumerate(_progress(loader, epoch + 1, num_epochs, progress)):
                if batch == 0:
                    group.start(trainer, net, X, y, ctx)  # rank 0's parameters everywhere
                schedule.apply(net, trainer, epoch + batch / (steps or 1), steps)
                batch_loss, batch_correct = batch_step(X, y)
                if not math.isfinite(batch_loss):
                    raise TrainingDivergedError(
                        'loss became %s at epoch %d, batch %d (lr %g); the update was not '
                        'applied. %s Try a lower learning rate or check the data.'
                        % (batch_loss, epoch + 1, batch + 1, trainer.learning_rate,
                           'The last good checkpoint is in %s.' % checkpoint_dir
                           if checkpoint_dir else ''))
                if loss_scale is None:
                    trainer.step(X.shape[0] * group.grad_scale)
                elif not loss_scale.step(trainer, X.shape[0] * group.grad_scale):
                    log('amp: gradients overflowed at epoch %d, batch %d: update skipped, loss '
                        'scale now %g' % (epoch + 1, batch + 1, loss_scale.scale))
                loss_sum += batch_loss
                correct += batch_correct
                seen += X.shape[0]
                if interrupt.requested:
                    break
            seconds = time.time() - start
            sync_aux_states(net)
            if interrupt.requested:
                # The epoch is incomplete: save under the last complete epoch number, so that a
                # resume redoes this epoch with the parameters trained so far.
                save(epoch)
                log('interrupted during epoch %d; checkpoint saved in %s'
                    % (epoch + 1, checkpoint_dir or '(no checkpoint_dir given)'))
                raise KeyboardInterrupt
            if seen == 0:
                raise ValueError('the loader yielded no batch in epoch %d' % (epoch + 1))
            group.average_aux_states(net)
            loss_sum, correct, seen = group.sum('epoch_counts', [loss_sum, correct, seen])
            record = dict(epoch=epoch + 1, loss=loss_sum / seen, train_acc=correct / seen,
                          samples_per_sec=seen / seconds, seconds=seconds,
                          lr=trainer.learning_rate, **head_state(net))
            verify_now = verify_targets and ((epoch + 1) % verify_every == 0
                                             or epoch + 1 == num_epochs)
            if verify_now:
                record['verification'] = _verify(verify_targets, test_net, ctx,
                                                 verify_batch_size or _batch_size(loader, ctx))
            reported_skips = _report_skips(loader, record, reported_skips, log)
            history['epochs'].append(record)
            log(_epoch_line(record, num_epochs))
            if animator:  # None or False (recipe.fit): no plot
                accs = [record['train_acc']]
                if verify_targets:
                    v = record.get('verification')
                    accs.append(sum(v.values()) / len(v) if v else None)
                animator.add(epoch + 1, [record['loss'], *accs])
            if verify_now and checkpoint_dir and is_master:
                scores = record['verification']
                acc = scores[select_by] if select_by else sum(scores.values()) / len(scores)
                if best is None or acc > best:
                    best = acc
                    ckpt.save_best(checkpoint_dir, net, dict(epoch=epoch + 1, accuracy=acc,
                                                             targets=record['verification']))
            save(epoch + 1)
    return history


def _mixed_precision(net, ctx, log):
    """Switch ``net``'s backbone to the devices' low-precision type; returns it (or None)."""
    dtype, note = amp_dtype(ctx)
    if note:
        log(note)
        return None
    set_compute_dtype(net, dtype)
    log('amp: the backbone computes in %s (float32 master weights, BatchNorm statistics, '
        'embedding layer, margin head and loss)%s'
        % (dtype, '; dynamic loss scaling' if dtype == 'float16' else ''))
    return dtype


def _report_skips(loader, record, reported, log):
    """Log the undecodable images skipped this epoch (loaders made with skip_bad=True)."""
    skipped = getattr(loader, 'skipped', None)
    if not skipped:
        return reported
    record['skipped_images'] = len(skipped)
    if len(skipped) > reported:
        first = skipped[reported]
        log('skipped %d undecodable image(s) in epoch %d (%d in all), e.g. %s%s: %s'
            % (len(skipped) - reported, record['epoch'], len(skipped), first.path,
               '' if first.record is None else ': record %s' % first.record, first.reason))
    return len(skipped)


def _steps_per_epoch(loader):
    try:
        return len(loader)
    except TypeError:  # an iterable without a length: the epoch is the unit
        return None


def _batch_size(loader, ctx):
    size = getattr(loader, '_batch_sampler', None)
    size = getattr(size, '_batch_size', None) or 64
    return max(size, len(ctx))


def _verify(targets, test_net, ctx, batch_size):
    from ..eval.verification import verify
    return {name: float(verify(data_set, test_net, ctx, batch_size=batch_size).accuracy)
            for name, data_set in targets.items()}


def _epoch_line(r, num_epochs):
    line = ('epoch %d/%d  loss %.4f  train acc %.4f  %.1f samples/s  %.1f s  lr %g'
            % (r['epoch'], num_epochs, r['loss'], r['train_acc'], r['samples_per_sec'],
               r['seconds'], r['lr']))
    for name, acc in (r.get('verification') or {}).items():
        line += '  %s %.4f' % (name, acc)
    return line
