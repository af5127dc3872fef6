"""Training on several machines with MXNet's parameter server (kvstore ``dist_*``).

Inside a worker, :class:`WorkerGroup` says who the worker is (``rank``, ``num_workers``) and runs
the few exchanges that ``train_ch_facerec`` adds to ``gluon.Trainer``: every worker starts from
rank 0's parameters, the workers check that they resume from the same checkpoint, and at the end
of each epoch they average the BatchNorm running statistics and sum their loss/accuracy counts.
``create_kvstore`` and ``create_trainer`` set a run up.

Starting the processes of a job is :mod:`gluon_arcface.train.launcher`'s job.

Update semantics with dist_sync / dist_device_sync (N workers, each stepping on a batch of B
images): the gradients of all workers are summed and divided by N * B, i.e. the update is the mean
gradient over the global batch of N * B images, the same update as one process whose devices
hold the N worker batches. With dist_async each worker's update (its own mean gradient over B
images) is applied by the servers as soon as it arrives.
"""
import os
import pickle
import weakref

from ..runtime import _mxnet  # noqa: F401  (NumPy semantics, first)
import mxnet as mx
from mxnet import autograd, gluon
from mxnet.gluon.parameter import DeferredInitializationError

from ..runtime.errors import CheckpointError, DistributedError

__all__ = ['DIST_KVSTORES', 'LOCAL_KVSTORES', 'create_kvstore', 'create_trainer', 'WorkerGroup',
           'KEY_BASE', 'DMLC_ENV']

DIST_KVSTORES = ('dist_sync', 'dist_device_sync', 'dist_sync_device', 'dist_async')
LOCAL_KVSTORES = ('device', 'local')
# The environment a launcher gives each process (scheduler, servers and workers).
DMLC_ENV = ('DMLC_ROLE', 'DMLC_PS_ROOT_URI', 'DMLC_PS_ROOT_PORT', 'DMLC_NUM_SERVER',
            'DMLC_NUM_WORKER')
# kvstore keys of WorkerGroup's own exchanges; gluon.Trainer uses 0 .. (number of parameters - 1).
KEY_BASE = 1 << 24
_KEYS = weakref.WeakKeyDictionary()  # KVStore -> {exchange name: key}; a key is initialised once


def create_kvstore(kvstore='device'):
    """'device' / 'local' -> the name (gluon.Trainer creates that store itself); 'dist_sync',
    'dist_device_sync', 'dist_async' -> ``mx.kv.create(kvstore)``, after checking that a launcher
    set the DMLC_* environment (without it MXNet would wait or abort)."""
    if kvstore in LOCAL_KVSTORES:
        return kvstore
    if kvstore not in DIST_KVSTORES:
        raise ValueError('unknown kvstore %r: expected one of %s'
                         % (kvstore, ', '.join(LOCAL_KVSTORES + DIST_KVSTORES)))
    missing = [name for name in DMLC_ENV if not os.environ.get(name)]
    if missing:
        raise DistributedError(
            'kvstore %s: %s not set. Start the job with a launcher, e.g. python '
            'scripts/launch.py -n 2 -s 1 --launcher local -- python scripts/train.py '
            '--kvstore %s ...' % (kvstore, ', '.join(missing), kvstore))
    return mx.kv.create(kvstore)


def create_trainer(params, optimizer='sgd', optimizer_params=None, kvstore='device',
                   loss_scaling=False):
    """A gluon.Trainer as ``train_ch_facerec`` needs it.

    ``kvstore`` is a name or a KVStore (from :func:`create_kvstore`). With dist_sync and
    dist_device_sync the servers only sum gradients and every worker runs the optimizer
    (``update_on_kvstore=False``), so learning-rate steps and optimizer states in checkpoints work;
    dist_async keeps the optimizer on the servers (MXNet allows nothing else).
    ``loss_scaling`` (float16 mixed precision): the gradients are summed and checked before
    the update, which then runs on the workers too (not with dist_async).
    """
    kv_type = kvstore if isinstance(kvstore, str) else kvstore.type
    update_on_kvstore = False if kv_type.startswith('dist') and 'async' not in kv_type else None
    if loss_scaling:
        if 'async' in kv_type:
            raise DistributedError('float16 loss scaling skips the updates of overflowing '
                                   'steps, which kvstore %s cannot (the servers update '
                                   'as gradients arrive); use dist_sync' % kv_type)
        update_on_kvstore = False
    return gluon.Trainer(params, optimizer, optimizer_params, kvstore=kvstore,
                         update_on_kvstore=update_on_kvstore)


class WorkerGroup:
    """This process's place in a run and the exchanges between workers.

    ``WorkerGroup(kv)`` with a dist KVStore, or a kvstore name / None for a single process
    (rank 0 of 1, every exchange a no-op). ``WorkerGroup.of(trainer)`` reads the trainer's kvstore.
    """

    def __init__(self, kv=None):
        if isinstance(kv, str) or kv is None or 'dist' not in kv.type:
            kv = None
        self.kv = kv
        self.rank = kv.rank if kv else 0
        self.num_workers = kv.num_workers if kv else 1
        self.sync = kv is not None and 'async' not in kv.type

    @property
    def distributed(self):
        return self.kv is not None

    @property
    def is_master(self):
        """Rank 0: the worker that verifies, logs and writes files."""
        return self.rank == 0

    @property
    def grad_scale(self):
        """Workers whose gradients one update sums: ``trainer.step(batch * grad_scale)``."""
        return self.num_workers if self.sync else 1

    @classmethod
    def of(cls, trainer):
        """The group of ``trainer``'s kvstore (a single process for other trainer types)."""
        config = getattr(trainer, '_kvstore_params', None)  # gluon.Trainer's kvstore arguments
        if config is None:
            return cls(None)
        kv = trainer._kvstore if trainer._kv_initialized else config['kvstore']
        if isinstance(kv, str) and kv.startswith('dist'):
            raise DistributedError(
                "the Trainer was given kvstore=%r, which it creates only at its first step; "
                "create it first: kv = gaf.create_kvstore(%r), then gaf.create_trainer(params, "
                "'sgd', {...}, kvstore=kv)" % (kv, kv))
        group = cls(kv)
        if group.sync:
            on_kv = trainer._update_on_kvstore if trainer._kv_initialized \
                else config['update_on_kvstore']
            if on_kv is not False:
                raise DistributedError(
                    'with kvstore %s the workers must run the optimizer themselves: create the '
                    'Trainer with update_on_kvstore=False (gaf.create_trainer does); otherwise '
                    'learning-rate steps never reach the servers and checkpoints cannot hold '
                    'the optimizer states' % kv.type)
        return group

    def check_schedule(self, schedule):
        """dist_async: the servers run the optimizer and never see a learning rate (or a
        backbone multiplier) changed by the workers; refuse a schedule that changes one."""
        if self.distributed and not self.sync and schedule.changes_lr:
            raise DistributedError(
                'kvstore %s runs the optimizer on the servers, which never see a learning rate '
                'changed by the workers: use dist_sync, or no --lr-steps, --lr-schedule cosine, '
                '--warmup-epochs, --freeze-epochs or --backbone-lr-mult' % self.kv.type)

    def _key(self, name, like):
        keys = _KEYS.setdefault(self.kv, {})
        if name not in keys:
            keys[name] = KEY_BASE + len(keys)
            self.kv.init(keys[name], mx.np.zeros(like.shape, dtype=like.dtype))
        return keys[name]

    def sum(self, name, values):
        """Element-wise sum over the workers of a list of numbers (float64); every worker must
        call it with the same ``name`` and length. Returns the values unchanged unless the
        kvstore is dist_sync / dist_device_sync."""
        if not self.sync:
            return [float(v) for v in values]
        arr = mx.np.array([float(v) for v in values], dtype='float64', ctx=mx.cpu())
        self.kv.pushpull(self._key(name, arr), arr, out=arr)
        return arr.asnumpy().tolist()

    def check_same(self, name, value, what):
        """Raise CheckpointError on every worker unless all workers passed the same ``value``
        (dist_sync / dist_device_sync; no check otherwise)."""
        if not self.sync:
            return
        total, squares = self.sum(name, [value, value * value])
        n = self.num_workers
        if total != n * value or squares != n * value * value:  # zero variance <=> all equal
            raise CheckpointError(
                'the workers disagree on %s: worker %d has %s, the mean over the %d workers is '
                '%g. Every worker must see the same checkpoints (a shared folder, or copies of '
                'it on every machine).' % (what, self.rank, value, n, total / n))

    def start(self, trainer, net, X, y, ctx):
        """Before the first update: every worker takes rank 0's parameters.

        gluon.Trainer sends rank 0's values to all workers when it sets its kvstore up, at its
        first step, i.e. after the first gradients; this does it before the first forward pass.
        Parameters whose shape is inferred (deferred initialisation) are first completed by a
        forward pass, ``net(X, y)`` on ``X``'s first device share, recorded as in training but
        without backward: BatchNorm statistics move in backward only, and oneDNN would reorder
        the weights of a prediction-mode pass in place into a layout that the kvstore
        (``dist_*``, CPU) then sends wrongly (the server fails with "init <key> first").
        """
        if not self.distributed or trainer._kv_initialized:
            return
        try:
            for param in net.collect_params().values():
                param.list_data()
        except DeferredInitializationError:
            x = gluon.utils.split_and_load(X, ctx, even_split=False)[0]
            with autograd.record():
                net(x, y[:x.shape[0]].as_in_ctx(x.ctx))
        if not self.sync:  # the servers' optimizer takes its gradient scale with it, now
            trainer._optimizer.rescale_grad = trainer._scale / (X.shape[0] * self.grad_scale)
        trainer._init_kvstore()
        trainer._init_params()

    def average_aux_states(self, net):
        """Average parameters without gradient (BatchNorm running mean/var) over the workers.

        Call after ``training.sync_aux_states`` (which averages over the devices of a worker);
        keeps the workers' networks identical. No-op unless dist_sync / dist_device_sync.
        """
        if not self.sync or self.num_workers == 1:
            return
        for index, param in enumerate(net.collect_params().values()):
            if param.grad_req != 'null':
                continue
            arr = param.list_data()[0].copyto(mx.cpu())
            self.kv.pushpull(self._key('aux:%d' % index, arr), arr, out=arr)
            for copy in param.list_data():  # in place, as training.sync_aux_states
                copy[:] = (arr / self.num_workers).as_in_ctx(copy.ctx)

    def checkpoint_trainer(self, trainer):
        """The trainer that checkpoints save and load. Under dist_async the optimizer states live
        on the servers, where MXNet cannot save them: checkpoints then hold the parameters and a
        states file holding None (momentum restarts at zero after a resume)."""
        if self.distributed and not self.sync:
            return _StatesOnServers(trainer)
        return trainer


class _StatesOnServers:
    """A Trainer whose save_states writes a pickled None and load_states does nothing."""

    def __init__(self, trainer):
        self._trainer = trainer

    def __getattr__(self, name):
        return getattr(self._trainer, name)

    def save_states(self, fname):
        with open(fname, 'wb') as f:
            pickle.dump(None, f)

    def load_states(self, fname):
        pass
