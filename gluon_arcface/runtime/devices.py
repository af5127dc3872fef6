"""Which devices a computation runs on: the one helper behind every ``ctx`` argument.

``as_contexts(ctx, net)`` turns what a user passes (nothing, a Context, a list, or a string from
the command line such as ``'cpu:0,cpu:1'``) into a list of MXNet Contexts. The default (None)
is where ``net``'s parameters are when a network is given, otherwise every GPU, or the CPU when
there is none (d2l's ``try_all_gpus``, as the chapter).
"""
from . import _mxnet  # noqa: F401  (NumPy semantics, first)
import mxnet as mx

from .errors import ConfigError

__all__ = ['as_contexts', 'available_memory']


def _parse(item):
    if isinstance(item, mx.Context):
        return item
    kind, _, index = str(item).strip().partition(':')
    if kind not in ('cpu', 'gpu') or (index and not index.isdigit()):
        raise ConfigError('bad context %r: expected cpu, cpu:N or gpu:N (comma separated)'
                          % item)
    return getattr(mx, kind)(int(index or 0))


def _net_contexts(net):
    for param in net.collect_params().values():
        try:
            return list(param.list_ctx())
        except RuntimeError:  # not initialised yet
            continue
    return None


def as_contexts(ctx=None, net=None):
    """A list of Contexts from ``ctx``.

    ``ctx``: None (``net``'s parameter contexts if ``net`` is given and initialised, else all
    GPUs, else ``[mx.cpu()]``), a Context, a list or tuple of Contexts or names, or a string
    ``'cpu'``, ``'gpu:1'``, ``'cpu:0,cpu:1'``. Raises ConfigError for a name it cannot read.
    """
    if ctx is None or (isinstance(ctx, str) and not ctx.strip()):
        found = _net_contexts(net) if hasattr(net, 'collect_params') else None
        if found:
            return found
        count = mx.context.num_gpus()
        return [mx.gpu(i) for i in range(count)] if count else [mx.cpu()]
    if isinstance(ctx, str):
        return [_parse(item) for item in ctx.split(',') if item.strip()]
    if isinstance(ctx, (list, tuple)):
        if not ctx:
            raise ConfigError('no device given: expected at least one context')
        return [_parse(item) for item in ctx]
    return [_parse(ctx)]


def available_memory():
    """Bytes of memory available to new allocations (Linux ``MemAvailable``), or None where
    unknown."""
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
