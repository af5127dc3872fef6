"""Mixed precision (``--amp``): which low-precision type the devices can use, and the loss
scaling float16 needs.

On CPUs with AVX512-BF16 or AMX, bfloat16 takes about a third less memory for a training step
and, with AMX, runs inference several times faster; whether the training step itself gets
faster depends on the CPU (docs/performance.md). On NVIDIA GPUs float16 uses the tensor
cores. :func:`amp_dtype` picks the type; ``model.set_compute_dtype`` runs the backbone in it
(float32 master weights, BatchNorm statistics, embedding layer, margin head and loss).
bfloat16 has float32's exponent range and needs no loss scaling; float16 does:
:class:`LossScale` scales the loss before backward, skips the update of a step whose gradients
overflowed and adapts the scale (MXNet's AMP ``LossScaler``: start at 2^16, halve on overflow,
double after 2000 clean steps).
"""
from ..runtime import _mxnet  # noqa: F401  (NumPy semantics, first)

from .model import mkldnn_enabled
from ..runtime.threads import cpu_info

__all__ = ['amp_dtype', 'LossScale']


def amp_dtype(ctx):
    """``(dtype, note)`` for mixed precision on the devices ``ctx`` (a list of Contexts).

    GPUs: 'float16'. CPUs with AVX512-BF16 or AMX and an MXNet build with oneDNN: 'bfloat16'.
    Otherwise 'float32', with ``note`` saying why (bfloat16 would be emulated, i.e. slower).
    """
    kinds = {c.device_type for c in ctx}
    if kinds == {'gpu'}:
        return 'float16', None
    if 'gpu' in kinds:
        return 'float32', 'amp: mixed CPU and GPU devices; training in float32'
    info = cpu_info()
    if not (info['avx512_bf16'] or info['amx']):
        return 'float32', ('amp: this CPU (%s) has neither AVX512-BF16 nor AMX, so bfloat16 '
                           'would be emulated and slower; training in float32' % info['model'])
    if not mkldnn_enabled():
        return 'float32', ('amp: this MXNet build runs without oneDNN, which bfloat16 needs; '
                           'training in float32')
    return 'bfloat16', None


class LossScale:
    """Dynamic loss scaling for float16 training on a ``gluon.Trainer`` whose kvstore does not
    update (``update_on_kvstore=False``), with the rules of MXNet's AMP ``LossScaler`` (whose
    overflow check takes only legacy arrays, not the NumPy-semantics ones used here).

    ``scale`` multiplies the loss before backward; :meth:`step` sums the gradients over the
    devices, and either applies the update with the gradients divided by the scale (returns
    True) or, when any gradient is not finite, skips it and halves the scale (returns False).
    After ``growth_interval`` clean steps in a row the scale doubles, up to ``max_scale``.
    """

    def __init__(self, init_scale=2.0 ** 16, growth_interval=2000, max_scale=2.0 ** 24):
        self.scale = float(init_scale)
        self.growth_interval, self.max_scale = growth_interval, float(max_scale)
        self.skipped, self._clean = 0, 0

    def has_overflow(self, params):
        """Whether any gradient of ``params`` (first device; summed already) is inf or NaN."""
        import mxnet as mx
        grads = [p.list_grad()[0].as_nd_ndarray() for p in params]
        finite = mx.nd.ones((1,), ctx=grads[0].context)
        for start in range(0, len(grads), 200):
            chunk = grads[start:start + 200]
            mx.nd.multi_all_finite(*chunk, num_arrays=len(chunk), init_output=False, out=finite)
        return not bool(finite.asscalar())

    def step(self, trainer, batch_size):
        trainer.allreduce_grads()
        params = [p for p in trainer._params if p.grad_req != 'null']
        if self.has_overflow(params):
            self.skipped += 1
            self._clean = 0
            self.scale /= 2.0
            return False
        trainer.update(batch_size * self.scale)
        self._clean += 1
        if self._clean == self.growth_interval:
            self._clean = 0
            self.scale = min(self.max_scale, self.scale * 2.0)
        return True
