"""Training checkpoints: parameters + trainer state + progress, written atomically.

A checkpoint folder holds ``epoch-0003.params`` / ``epoch-0003.states`` and ``checkpoint.json``
(what the latest complete checkpoint is, with the training history), plus ``best.params`` /
``best.json`` for the best verification accuracy. Every file is written to a temporary name,
flushed to disk and renamed, and ``checkpoint.json`` is replaced last: a crash or a full disk
while saving leaves the previous checkpoint usable.
"""
import io
import json
import os
import pickle
import sys

from ..runtime.errors import CheckpointError
from ..runtime.fileio import atomic_write, write_json

__all__ = ['save_checkpoint', 'load_checkpoint', 'load_parameters', 'latest_checkpoint',
           'save_best', 'read_best', 'check_states_file']

STATE_FILE = 'checkpoint.json'
BEST_FILE = 'best.json'


def _epoch_files(folder, epoch):
    stem = os.path.join(folder, 'epoch-%04d' % epoch)
    return stem + '.params', stem + '.states'


def save_checkpoint(folder, epoch, net, trainer, history=None, keep_last=2, extra=None):
    """Save parameters and trainer state after ``epoch`` (1-based count of finished epochs).

    ``history`` (the training history so far) and ``extra`` (e.g. base learning rate) go into
    checkpoint.json. Only the ``keep_last`` newest epoch checkpoints are kept.
    """
    os.makedirs(folder, exist_ok=True)
    params, states = _epoch_files(folder, epoch)
    with atomic_write(params) as tmp:
        net.save_parameters(tmp)
    with atomic_write(states) as tmp:
        trainer.save_states(tmp)
    state = dict(epoch=epoch, params=os.path.basename(params), states=os.path.basename(states),
                 history=history or {}, **(extra or {}))
    previous = _read_state(folder)
    write_json(os.path.join(folder, STATE_FILE), state)
    if keep_last:
        _prune(folder, keep_last, keep={previous.get('epoch') if previous else None, epoch})
    return params


def _prune(folder, keep_last, keep):
    epochs = sorted(int(f[6:10]) for f in os.listdir(folder)
                    if f.startswith('epoch-') and f.endswith('.params') and f[6:10].isdigit())
    for epoch in epochs[:-keep_last]:
        if epoch in keep:
            continue
        for path in _epoch_files(folder, epoch):
            if os.path.exists(path):
                os.remove(path)


def _read_state(folder, name=STATE_FILE):
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            state = json.load(f)
        if not isinstance(state, dict) or 'epoch' not in state:
            raise ValueError('no "epoch" field')
        if not isinstance(state['epoch'], int) or state['epoch'] < 0:
            raise ValueError('"epoch" is %r, expected a non-negative integer' % (state['epoch'],))
        for key in ('params', 'states'):
            name = state.get(key)
            if name is not None and (not isinstance(name, str) or os.path.basename(name) != name
                                     or name in ('', '.', '..')):
                raise ValueError('"%s" is %r, expected a file name in the folder' % (key, name))
    except (ValueError, OSError) as e:
        raise CheckpointError('%s: not a valid checkpoint description (%s)' % (path, e)) from None
    return state


def latest_checkpoint(folder):
    """checkpoint.json of ``folder`` as a dict, or None when there is no checkpoint yet."""
    return _read_state(folder) if os.path.isdir(folder) else None


def read_best(folder):
    """best.json of ``folder`` (epoch, accuracy, params) as a dict, or None."""
    return _read_state(folder, BEST_FILE) if os.path.isdir(folder) else None


def load_parameters(net, path, ctx=None):
    """``net.load_parameters(path, ctx)``, also accepting a file written before the margin heads
    had their state parameters (``margin_scale``, ``margin_ramp``): those keep their values."""
    from ..nn.margin import HEAD_STATE
    try:
        net.load_parameters(path, ctx=ctx)
    except AssertionError as e:  # gluon's message for a parameter missing from the file
        if 'is missing in file' not in str(e) or not hasattr(net, '_collect_params_with_prefix'):
            raise
        from mxnet import npx
        absent = set(net._collect_params_with_prefix()) - set(npx.load(path))
        if not absent or any(name.rsplit('.', 1)[-1] not in HEAD_STATE for name in absent):
            raise
        net.load_parameters(path, ctx=ctx, allow_missing=True)


def load_checkpoint(folder, net, trainer=None, ctx=None):
    """Restore the latest checkpoint of ``folder`` into ``net`` (and ``trainer``).

    Returns checkpoint.json's dict (``epoch``, ``history``, ...). Raises CheckpointError when
    there is none or its files are missing or do not fit the network.
    """
    state = latest_checkpoint(folder)
    if state is None:
        raise CheckpointError('%s: no checkpoint to resume from (checkpoint.json missing)'
                              % folder)
    params = os.path.join(folder, str(state.get('params')))
    states = os.path.join(folder, str(state.get('states')))
    for path in (params, states) if trainer is not None else (params,):
        if not os.path.isfile(path):
            raise CheckpointError('%s: listed in %s but missing%s'
                                  % (path, STATE_FILE, _others(folder, path)))
    try:
        load_parameters(net, params, ctx=ctx)
    except Exception as e:  # noqa: BLE001 - MXNet reports bad files and mismatches variously
        if 'file format' in str(e) or 'fi->Read' in str(e):
            raise CheckpointError('%s is unreadable (truncated or corrupt)%s'
                                  % (params, _others(folder, params))) from None
        raise CheckpointError('%s does not fit this network (different depth, embedding size or '
                              'number of classes?): %s' % (params, str(e)[:500])) from None
    if trainer is not None:
        check_states_file(states)
        try:
            trainer.load_states(states)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError('%s: the trainer state does not fit this trainer (another '
                                  'optimizer or network?): %s: %s'
                                  % (states, type(e).__name__, str(e)[:300])) from None
    return state


def _others(folder, path):
    others = sorted(f for f in os.listdir(folder) if f.endswith(os.path.splitext(path)[1])
                    and f != os.path.basename(path))
    return ('; other checkpoints in the folder: %s' % ', '.join(others)) if others else ''


# What MXNet's Trainer.save_states pickles: the updater states (NDArrays, in dicts and tuples)
# and the optimizer object (with its learning-rate scheduler).
_STATE_MODULES = {'mxnet.ndarray.ndarray': ('NDArray',), 'mxnet.numpy.multiarray': ('ndarray',),
                  'mxnet.optimizer.optimizer': None, 'mxnet.optimizer': None,
                  'mxnet.lr_scheduler': None}


class _StatesUnpickler(pickle.Unpickler):
    def __init__(self, f, path):
        super().__init__(f)
        self._path = path

    def find_class(self, module, name):
        if (module, name) == ('builtins', 'bytearray'):
            return _bytearray_of_bytes
        if module in _STATE_MODULES and module in sys.modules:  # loaded with mxnet already
            from mxnet.lr_scheduler import LRScheduler
            from mxnet.optimizer import Optimizer
            obj = getattr(sys.modules[module], name, None)
            allowed = _STATE_MODULES[module]
            if isinstance(obj, type) and (name in allowed if allowed is not None else
                                          issubclass(obj, (Optimizer, LRScheduler))):
                return obj
        raise CheckpointError('%s: refusing to load %s.%s: a trainer state file holds only '
                              'NDArrays and the optimizer (loading it could run code)'
                              % (self._path, module, name))

    def persistent_load(self, pid):
        raise CheckpointError('%s: refusing persistent id in a trainer state file' % self._path)


def _bytearray_of_bytes(data=b'', *args):
    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError('bytearray of %s' % type(data).__name__)
    return bytearray(data)


def check_states_file(path):
    """Check that a trainer state file (``.states``, a pickle) holds only what
    ``Trainer.save_states`` writes, before MXNet unpickles it: a checkpoint from elsewhere
    cannot run code. Raises CheckpointError for anything else, or a truncated/corrupt file."""
    try:
        with open(path, 'rb') as f:
            data = f.read()
        _StatesUnpickler(io.BytesIO(data), path).load()
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure means the file is unusable
        raise CheckpointError('%s is unreadable (truncated or corrupt): %s: %s%s'
                              % (path, type(e).__name__, str(e)[:200],
                                 _others(os.path.dirname(path) or '.', path))) from None


def save_best(folder, net, info):
    """Save ``net``'s parameters as best.params, ``info`` (accuracy, epoch...) as best.json."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, 'best.params')
    with atomic_write(path) as tmp:
        net.save_parameters(tmp)
    write_json(os.path.join(folder, BEST_FILE), dict(info, params='best.params'))
    return path
