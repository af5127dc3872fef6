"""Classification heads on face embeddings: the combined-margin ArcMarginBlock and plain softmax.

ArcMarginBlock turns the target logit cos(theta) into cos(a*theta + m) - b and scales every
logit by s. The named losses are presets of (a, m, b): see ``MARGIN_PRESETS``.

Two values may change during training without rebuilding the hybridized graph: the scale s and
the margin ramp r in [0, 1] (the margin applied is r times the target one: a' = 1 + (a - 1) r,
m' = m r, b' = b r). They are the head's non-trainable parameters ``margin_scale`` and
``margin_ramp`` (``HEAD_STATE``), read by the graph as BatchNorm reads its running statistics and
written between steps (:func:`set_head_state`): the ramp by a margin warm-up
(``schedules.TrainSchedule``), the scale by dynamic AdaCos (:meth:`ArcMarginBlock.update_scale`,
Zhang et al. 2019), which sizes s from the batch. :func:`adacos_fixed_scale` is AdaCos's fixed
scale for C classes, sqrt(2) ln(C - 1).
"""
import math

import numpy as np

from ..runtime import _mxnet  # noqa: F401  (NumPy semantics, first)
from mxnet import init
from mxnet import np as mnp
from mxnet import npx
from mxnet.gluon import nn

from ..runtime.errors import ConfigError

__all__ = ['ArcMarginBlock', 'SoftmaxBlock', 'MARGIN_PRESETS', 'HEAD_STATE',
           'margin_target_logit', 'adacos_fixed_scale', 'adacos_scale', 'set_head_state',
           'head_state', 'margin_settings', 'NORM_EPS', 'COS_CLIP']

# (margin_a, margin_m, margin_b) of each loss; s = 64 for all of them.
MARGIN_PRESETS = {
    'arcface': dict(margin_a=1.0, margin_m=0.5, margin_b=0.0),
    'cosface': dict(margin_a=1.0, margin_m=0.0, margin_b=0.35),
    'sphereface': dict(margin_a=1.35, margin_m=0.0, margin_b=0.0),
}
HEAD_STATE = ('margin_scale', 'margin_ramp')  # non-trainable, written between steps
NORM_EPS = 1e-5
# arccos has an infinite slope at +-1; cos(theta) is clipped into the open interval first.
COS_CLIP = 1.0 - 1e-6


def margin_target_logit(F, cos_t, margin_a, margin_m, margin_b):
    """cos(a * arccos(cos_t) + m) - b, with cos_t clipped into (-1, 1); any shape. The margins
    are numbers or arrays that broadcast with ``cos_t``."""
    theta = F.np.arccos(F.np.clip(cos_t, -COS_CLIP, COS_CLIP))
    return F.np.cos(margin_a * theta + margin_m) - margin_b


def _unit_rows(F, x):
    """Rows of ``x`` divided by their L2 norm (+NORM_EPS)."""
    return x / (F.np.sqrt(F.np.sum(x * x, axis=1, keepdims=True)) + NORM_EPS)


def adacos_fixed_scale(num_classes):
    """AdaCos's fixed scale for ``num_classes`` (C) classes: sqrt(2) ln(C - 1), at least 1."""
    if num_classes < 2:
        raise ValueError('AdaCos needs at least 2 classes, got %d' % num_classes)
    return max(1.0, math.sqrt(2.0) * math.log(num_classes - 1))


def adacos_scale(others, theta):
    """Dynamic AdaCos: s = ln(B_avg) / cos(min(pi/4, theta_med)).

    ``others`` (N,): for each sample, the sum over the non-target classes of exp(s cos theta_k)
    at the current scale; ``theta`` (N,): the angle between each sample and its class centre
    (radians). B_avg is the mean of ``others``, theta_med the median of ``theta``.
    """
    others, theta = np.asarray(others, np.float64), np.asarray(theta, np.float64)
    b_avg = float(np.mean(others))
    theta_med = float(np.median(theta))
    return math.log(b_avg) / math.cos(min(math.pi / 4, theta_med))


def set_head_state(net, name, value):
    """Write ``value`` into the state parameter ``name`` (``'margin_scale'`` or
    ``'margin_ramp'``) of every margin head in ``net``, on every device."""
    if name not in HEAD_STATE:
        raise ValueError('unknown head state %r: expected one of %s' % (name, HEAD_STATE))
    for param in net.collect_params('.*_' + name + '$').values():
        for array in param.list_data():
            array[:] = value


def head_state(net):
    """``{'margin_scale': s, 'margin_ramp': r}`` of the first margin head in ``net`` (floats),
    or ``{}`` when it has none."""
    out = {}
    for name in HEAD_STATE:
        params = list(net.collect_params('.*_' + name + '$').values())
        if params:
            out[name] = float(params[0].list_data()[0].asnumpy()[0])
    return out


def margin_settings(loss='arcface', margin_s=64.0, margin_m=None, margin_a=None, margin_b=None,
                    num_classes=None):
    """ArcMarginBlock keyword arguments: the preset of ``loss``, overridden by explicit values.

    ``margin_s``: a number; ``'auto'``: AdaCos's fixed scale sqrt(2) ln(C - 1) for
    ``num_classes`` C; ``'adacos'``: dynamic AdaCos, starting from that value
    (``adaptive_scale=True``). ``loss='softmax'`` returns None (a plain fully connected head).
    """
    if loss == 'softmax':
        if margin_s == 'adacos':
            raise ConfigError("--margin-s adacos sizes the scale of a margin head; the softmax "
                              "head has none: use --loss arcface, cosface or sphereface")
        return None
    if loss not in MARGIN_PRESETS:
        raise ConfigError('unknown loss %r: expected one of %s or softmax'
                          % (loss, ', '.join(sorted(MARGIN_PRESETS))))
    out = dict(MARGIN_PRESETS[loss])
    if margin_s in ('auto', 'adacos'):
        if num_classes is None:
            raise ConfigError('margin_s=%r needs the number of classes' % margin_s)
        out['margin_s'] = adacos_fixed_scale(num_classes)
        if margin_s == 'adacos':
            out['adaptive_scale'] = True
    else:
        out['margin_s'] = float(margin_s)
    for key, value in (('margin_m', margin_m), ('margin_a', margin_a), ('margin_b', margin_b)):
        if value is not None:
            out[key] = value
    return out


class ArcMarginBlock(nn.HybridBlock):
    """Combined-margin softmax head (ArcFace by default).

    ``forward(x, y)``: embeddings x (N, emb_size) float32, labels y (N,) -> logits
    (N, num_classes) = s * cos(theta_j), where the target class's cos(theta) is replaced by
    cos(a' * theta + m') - b' (the margins times the ramp, see the module notes). Parameters:
    ``fc7_weight`` (num_classes, emb_size), initialised Normal(0.01) at construction; the state
    ``margin_scale`` (1,) = ``margin_s`` and ``margin_ramp`` (1,) = 1, not trained.
    ``adaptive_scale``: dynamic AdaCos, the scale set by :meth:`update_scale` after each step.
    """

    def __init__(self, emb_size, num_classes, margin_s=64.0, margin_m=0.5, margin_a=1.0,
                 margin_b=0.0, adaptive_scale=False, **kwargs):
        super().__init__(**kwargs)
        self.emb_size, self.num_classes = emb_size, num_classes
        self.margin_s, self.margin_m = float(margin_s), float(margin_m)
        self.margin_a, self.margin_b = float(margin_a), float(margin_b)
        self.adaptive_scale = bool(adaptive_scale)
        with self.name_scope():
            self.fc7_weight = self.params.get('fc7_weight', shape=(num_classes, emb_size),
                                              init=init.Normal(0.01))
            self.margin_scale = self.params.get('margin_scale', shape=(1,), grad_req='null',
                                                init=init.Constant(self.margin_s),
                                                differentiable=False)
            self.margin_ramp = self.params.get('margin_ramp', shape=(1,), grad_req='null',
                                               init=init.Constant(1.0), differentiable=False)
        self.initialize()

    def cosine(self, F, x, fc7_weight):
        """cos(theta) between embeddings and class centres: (N, num_classes)."""
        return F.np.dot(_unit_rows(F, x), _unit_rows(F, fc7_weight).T)

    def hybrid_forward(self, F, x, y, fc7_weight, margin_scale, margin_ramp):
        cos_t = self.cosine(F, x, fc7_weight)
        y = y.astype('int32')
        target = F.npx.pick(cos_t, y, axis=1)
        if self.margin_a == 1.0 and self.margin_m == 0.0:  # CosFace or none: no arccos needed
            new_target = target - margin_ramp * self.margin_b
        else:
            new_target = margin_target_logit(
                F, target, 1.0 + margin_ramp * (self.margin_a - 1.0), margin_ramp * self.margin_m,
                margin_ramp * self.margin_b)
        mask = F.npx.one_hot(y, self.num_classes)
        logits = cos_t + mask * F.np.expand_dims(new_target - target, 1)
        return logits * margin_scale

    def target_angle(self, target_logit, scale, ramp):
        """The angle theta (radians) of the target class from its logit, inverting
        s (cos(a' theta + m') - b'); numpy arrays in, numpy out."""
        a = 1.0 + ramp * (self.margin_a - 1.0)
        cos_shifted = np.clip(target_logit / scale + ramp * self.margin_b, -1.0, 1.0)
        return (np.arccos(cos_shifted) - ramp * self.margin_m) / a

    def state(self, name):
        """The current value of the state parameter ``name`` (a float)."""
        return float(getattr(self, name).list_data()[0].asnumpy()[0])

    def update_scale(self, logits, labels):
        """Dynamic AdaCos after a step: the scale for the next step from this step's logits.

        ``logits`` / ``labels``: lists over devices of this head's outputs (n_d, num_classes)
        and the labels (n_d,). Returns the new scale, written to ``margin_scale`` everywhere.
        """
        scale, ramp = self.state('margin_scale'), self.state('margin_ramp')
        others, theta = [], []
        for z, y in zip(logits, labels):  # reduced on the device to (n_d,) vectors
            y = y.astype('int32')
            off_target = 1 - npx.one_hot(y, self.num_classes)
            others.append((mnp.exp(z) * off_target).sum(axis=1).asnumpy())
            target = npx.pick(z, y, axis=1).asnumpy().astype(np.float64)
            theta.append(self.target_angle(target, scale, ramp))
        new = adacos_scale(np.concatenate(others), np.concatenate(theta))
        set_head_state(self, 'margin_scale', new)
        return new

    def __repr__(self):
        return '%s(%d -> %d, s=%s, m=%g, a=%g, b=%g)' % (
            self.__class__.__name__, self.emb_size, self.num_classes,
            'adacos' if self.adaptive_scale else '%g' % self.margin_s, self.margin_m,
            self.margin_a, self.margin_b)


class SoftmaxBlock(nn.HybridBlock):
    """Plain softmax head: a fully connected layer, ``forward(x, y)`` ignores y.

    Parameters ``fc7_weight`` (num_classes, emb_size) and ``fc7_bias`` (num_classes,); same call
    signature as ArcMarginBlock so TrainBlock can take either.
    """

    def __init__(self, emb_size, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.emb_size, self.num_classes = emb_size, num_classes
        with self.name_scope():
            self.fc7_weight = self.params.get('fc7_weight', shape=(num_classes, emb_size),
                                              init=init.Normal(0.01))
            self.fc7_bias = self.params.get('fc7_bias', shape=(num_classes,), init=init.Zero())
        self.initialize()

    def hybrid_forward(self, F, x, y, fc7_weight, fc7_bias):
        logits = F.npx.fully_connected(x, fc7_weight, fc7_bias, num_hidden=self.num_classes)
        # The labels do not change a plain softmax, but a hybridized graph drops an input that
        # no operator reads, and the TrainBlock around this head could then not infer shapes:
        # y enters as an exact zero.
        return logits + F.np.expand_dims(y.astype('float32') * 0, 1)
