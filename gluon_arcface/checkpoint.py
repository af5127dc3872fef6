"""Training checkpoints: parameters + trainer state + progress, written atomically.

A checkpoint folder holds ``epoch-0003.params`` / ``epoch-0003.states`` and ``checkpoint.json``
(what the latest complete checkpoint is, with the training history), plus ``best.params`` /
``best.json`` for the best verification accuracy. Every file is written to a temporary name,
flushed to disk and renamed, and ``checkpoint.json`` is replaced last: a crash or a full disk
while saving leaves the previous checkpoint usable.
"""
import contextlib
import json
import os
import tempfile

from .errors import CheckpointError

__all__ = ['save_checkpoint', 'load_checkpoint', 'latest_checkpoint', 'save_best',
           'atomic_write', 'write_json']

STATE_FILE = 'checkpoint.json'
BEST_FILE = 'best.json'


@contextlib.contextmanager
def atomic_write(path):
    """Yield a temporary file name in ``path``'s folder; on success it replaces ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp',
                               dir=folder)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, obj):
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_write(path) as tmp:
        with open(tmp, 'w') as f:
            json.dump(obj, f, indent=2)


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
    except ValueError as e:
        raise CheckpointError('%s: not a valid checkpoint description (%s)' % (path, e)) from None
    return state


def latest_checkpoint(folder):
    """checkpoint.json of ``folder`` as a dict, or None when there is no checkpoint yet."""
    return _read_state(folder) if os.path.isdir(folder) else None


def load_checkpoint(folder, net, trainer=None, ctx=None):
    """Restore the latest checkpoint of ``folder`` into ``net`` (and ``trainer``).

    Returns checkpoint.json's dict (``epoch``, ``history``, ...). Raises CheckpointError when
    there is none or its files are missing or do not fit the network.
    """
    state = latest_checkpoint(folder)
    if state is None:
        raise CheckpointError('%s: no checkpoint to resume from (checkpoint.json missing)'
                              % folder)
    params = os.path.join(folder, state['params'])
    states = os.path.join(folder, state['states'])
    for path in (params, states) if trainer is not None else (params,):
        if not os.path.isfile(path):
            raise CheckpointError('%s: listed in %s but missing' % (path, STATE_FILE))
    try:
        net.load_parameters(params, ctx=ctx)
    except (AssertionError, ValueError, KeyError) as e:  # MXNet reports mismatches this way
        raise CheckpointError('%s does not fit this network (different depth, embedding size or '
                              'number of classes?): %s' % (params, e)) from None
    if trainer is not None:
        trainer.load_states(states)
    return state


def save_best(folder, net, info):
    """Save ``net``'s parameters as best.params, ``info`` (accuracy, epoch...) as best.json."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, 'best.params')
    with atomic_write(path) as tmp:
        net.save_parameters(tmp)
    write_json(os.path.join(folder, BEST_FILE), dict(info, params='best.params'))
    return path
