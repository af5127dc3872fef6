"""Training on several machines with MXNet's parameter server (kvstore ``dist_*``).

Inside a worker, :class:`WorkerGroup` says who the worker is (``rank``, ``num_workers``) and runs
the few exchanges that ``train_ch_facerec`` adds to ``gluon.Trainer``: every worker starts from
rank 0's parameters, the workers check that they resume from the same checkpoint, and at the end
of each epoch they average the BatchNorm running statistics and sum their loss/accuracy counts.
``create_kvstore`` and ``create_trainer`` set a run up.

Outside, :func:`launch` runs a command as a distributed job with MXNet's own launcher
(``mxnet/tools/launch.py`` and ``dmlc_tracker``, shipped in the wheel), made to work on
Python >= 3.9, to stop every process when one of them fails, and to return a non-zero status then.

Update semantics with dist_sync / dist_device_sync (N workers, each stepping on a batch of B
images): the gradients of all workers are summed and divided by N * B, i.e. the update is the mean
gradient over the global batch of N * B images, the same update as one process whose devices
hold the N worker batches. With dist_async each worker's update (its own mean gradient over B
images) is applied by the servers as soon as it arrives.
"""
import importlib.util
import os
import pickle
import shlex
import signal
import subprocess
import sys
import threading
import time
import weakref

from . import _mxnet  # noqa: F401  (NumPy semantics, first)
import mxnet as mx
from mxnet import autograd, gluon
from mxnet.gluon.parameter import DeferredInitializationError

from .errors import CheckpointError, DistributedError
from .threads import cgroup_cpu_limit, physical_cores, user_threads

__all__ = ['DistributedError', 'DIST_KVSTORES', 'LOCAL_KVSTORES', 'create_kvstore',
           'create_trainer',
           'WorkerGroup', 'launcher_script', 'launch', 'KEY_BASE', 'DMLC_ENV']

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


def create_trainer(params, optimizer='sgd', optimizer_params=None, kvstore='device'):
    """A gluon.Trainer as ``train_ch_facerec`` needs it.

    ``kvstore`` is a name or a KVStore (from :func:`create_kvstore`). With dist_sync and
    dist_device_sync the servers only sum gradients and every worker runs the optimizer
    (``update_on_kvstore=False``), so learning-rate steps and optimizer states in checkpoints work;
    dist_async keeps the optimizer on the servers (MXNet allows nothing else).
    """
    kv_type = kvstore if isinstance(kvstore, str) else kvstore.type
    update_on_kvstore = False if kv_type.startswith('dist') and 'async' not in kv_type else None
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

    def check_lr_steps(self, lr_steps):
        """dist_async: the servers' optimizer does not see learning-rate changes; refuse steps."""
        if self.distributed and not self.sync and lr_steps:
            raise DistributedError(
                'lr_steps %s with kvstore %s: the optimizer runs on the servers, which never see '
                'a learning rate changed by the workers; use dist_sync or no steps'
                % (list(lr_steps), self.kv.type))

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


# ----------------------------------------------------------------------------------------------
# The launcher front end

# Runs in the launcher's process: argv = [launch.py, host IP or '', launch.py's arguments...].
_BOOT = r'''
import os, re, runpy, sys, threading

# dmlc_tracker calls Thread.isAlive, which Python 3.9 removed.
threading.Thread.isAlive = threading.Thread.is_alive

def _process_failed(args):
    # The tracker runs each process from a thread that raises when the process exits non-zero,
    # then keeps waiting for the scheduler, which waits for the dead worker: exit instead, with
    # the process's status, so that the front end stops the job.
    code = getattr(args.exc_value, 'returncode', None)
    text = str(args.exc_value)
    if code is None:
        found = re.search(r'return code=(-?\d+)', text)
        code = int(found.group(1)) if found else 1
    role = re.search(r"'DMLC_ROLE': '(\w+)'", text)
    task = re.search(r"'DMLC_TASK_ID': '(\d+)'", text)
    who = '%s %s' % (role.group(1), task.group(1)) if role and task else 'a process'
    status = 128 - code if code < 0 else (code if 0 < code < 256 else 1)
    sys.stderr.write('launch: %s exited with status %s; stopping the job\n' % (who, code))
    sys.stderr.flush()
    os._exit(status)

threading.excepthook = _process_failed
launcher, host_ip = sys.argv[1], sys.argv[2]
if host_ip:
    import dmlc_tracker.tracker
    dmlc_tracker.tracker.get_host_ip = lambda *args: host_ip
sys.argv = [launcher] + sys.argv[3:]
runpy.run_path(launcher, run_name='__main__')
'''

LAUNCHERS = ('local', 'ssh', 'mpi', 'sge', 'yarn')


def launcher_script():
    """Path of MXNet's launcher, ``mxnet/tools/launch.py`` (shipped in the mxnet 1.x wheels)."""
    spec = importlib.util.find_spec('mxnet')
    path = os.path.join(os.path.dirname(spec.origin), 'tools', 'launch.py')
    if not os.path.isfile(path) or importlib.util.find_spec('dmlc_tracker') is None:
        raise DistributedError('%s or the dmlc_tracker package is missing: this MXNet build does '
                               'not ship its launcher (the mxnet 1.9.1 wheel does)' % path)
    return path


def _command_line(command, launcher):
    if launcher == 'local':
        return shlex.join(command)
    # ssh/mpi wrap the command in single quotes on a remote shell: no quoting can pass through.
    bad = [arg for arg in command if shlex.quote(arg) != arg]
    if bad:
        raise ValueError('the %s launcher passes the command through a remote shell unquoted; '
                         'these arguments need quoting: %s' % (launcher, ' '.join(bad)))
    return ' '.join(command)


def _group_alive(pgid):
    """True while a process of group ``pgid`` runs (zombies do not count, /proc permitting)."""
    if not os.path.isdir('/proc'):
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
    for pid in os.listdir('/proc'):
        try:
            with open('/proc/%s/stat' % pid) as f:
                fields = f.read().rsplit(')', 1)[1].split()  # state, ppid, pgrp, ...
        except (OSError, IndexError):
            continue
        if fields[0] != 'Z' and int(fields[2]) == pgid:
            return True
    return False


def _stop_group(pgid, grace):
    """Wait up to ``grace`` s for group ``pgid`` to end, then SIGTERM it, then SIGKILL it."""
    for sig, wait in ((None, grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if sig is not None:
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
        deadline = time.time() + wait
        while _group_alive(pgid):
            if time.time() > deadline:
                break
            time.sleep(0.1)
        else:
            return


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


def launch(command, num_workers, num_servers=None, launcher='local', hostfile=None,
           sync_dst_dir=None, env=(), env_server=(), env_worker=(), host_ip=None, timeout=None,
           grace=30.0, threads=None):
    """Run ``command`` (a list of arguments) as a distributed job; return its exit status.

    MXNet's launcher starts a scheduler, ``num_servers`` servers (default: ``num_workers``) and
    ``num_workers`` workers, all running ``command`` with their DMLC_* environment, on this
    machine (``launcher='local'``) or on the machines of ``hostfile`` ('ssh', 'mpi'; 'sge',
    'yarn' as MXNet supports them). ``env`` / ``env_server`` / ``env_worker`` are launch.py's
    ``--env`` options (``NAME:value``). ``host_ip``: the scheduler's address (default 127.0.0.1
    for 'local', the launcher's guess otherwise). ``threads``: the compute threads of each
    process (``OMP_NUM_THREADS``); by default the local launcher shares this machine's physical
    cores among the workers (unless the user set OMP_NUM_THREADS), and with other launchers each
    process applies the thread policy on its own machine.

    The job's processes form one process group, stopped (SIGTERM, then SIGKILL) when any of them
    exits non-zero (whose status is returned), when ``timeout`` seconds pass (status 124), on
    SIGINT/SIGTERM, or ``grace`` seconds after a successful end. Processes the ssh launcher
    started on other machines are not in the group: see mxnet/tools/kill-mxnet.py.
    """
    command = list(command)
    if not command:
        raise ValueError('launch: no command given; expected e.g. python scripts/train.py '
                         '--kvstore dist_sync ...')
    if launcher not in LAUNCHERS:
        raise ValueError('unknown launcher %r: expected one of %s'
                         % (launcher, ', '.join(LAUNCHERS)))
    if launcher in ('ssh', 'mpi') and not hostfile:
        raise ValueError('the %s launcher needs a host file (one host[:port] per line)' % launcher)
    if num_workers < 1 or (num_servers is not None and num_servers < 1):
        raise ValueError('expected at least one worker and one server, got %s workers, %s servers'
                         % (num_workers, num_servers))
    args = ['-n', str(num_workers), '-s', str(num_servers or num_workers), '--launcher', launcher]
    child_env = dict(os.environ)
    if threads is None and launcher == 'local' and user_threads() is None:
        threads = max(1, physical_cores(quota=cgroup_cpu_limit()) // num_workers)
    if threads is not None:
        child_env['OMP_NUM_THREADS'] = str(threads)
        env = list(env) + ['OMP_NUM_THREADS:%d' % threads]
    elif user_threads() is None:  # this process's policy value: each process chooses its own
        child_env.pop('OMP_NUM_THREADS', None)
    if hostfile:
        args += ['-H', hostfile]
    if sync_dst_dir:
        args += ['--sync-dst-dir', sync_dst_dir]
    for option, values in (('--env', env), ('--env-server', env_server),
                           ('--env-worker', env_worker)):
        for value in values:
            args += [option, value]
    args.append(_command_line(command, launcher))
    if host_ip is None and launcher == 'local':
        host_ip = '127.0.0.1'
    proc = subprocess.Popen([sys.executable, '-c', _BOOT, launcher_script(), host_ip or ''] + args,
                            start_new_session=True, env=child_env)
    previous = None  # SIGTERM ends this process through the finally below, not at once
    if threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        previous = signal.signal(signal.SIGTERM, _raise_exit)
    status = None
    try:
        status = proc.wait(timeout=timeout)
        return status
    except subprocess.TimeoutExpired:
        print('launch: still running after %g s; stopping the job' % timeout, file=sys.stderr,
              flush=True)
        status = 124
        return status
    finally:
        _stop_group(proc.pid, grace if status == 0 else 0.0)
        proc.wait()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
