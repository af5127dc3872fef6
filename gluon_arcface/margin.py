"""Classification heads on face embeddings: the combined-margin ArcMarginBlock and plain softmax.

ArcMarginBlock turns the target logit cos(theta) into cos(a*theta + m) - b and scales every
logit by s. The named losses are presets of (a, m, b): see ``MARGIN_PRESETS``.
"""
from mxnet import init
from mxnet.gluon import nn

__all__ = ['ArcMarginBlock', 'SoftmaxBlock', 'MARGIN_PRESETS', 'margin_target_logit',
           'NORM_EPS', 'COS_CLIP']

# (margin_a, margin_m, margin_b) of each loss; s = 64 for all of them.
MARGIN_PRESETS = {
    'arcface': dict(margin_a=1.0, margin_m=0.5, margin_b=0.0),
    'cosface': dict(margin_a=1.0, margin_m=0.0, margin_b=0.35),
    'sphereface': dict(margin_a=1.35, margin_m=0.0, margin_b=0.0),
}
NORM_EPS = 1e-5
# arccos has an infinite slope at +-1; cos(theta) is clipped into the open interval first.
COS_CLIP = 1.0 - 1e-6


def margin_target_logit(F, cos_t, margin_a, margin_m, margin_b):
    """cos(a * arccos(cos_t) + m) - b, with cos_t clipped into (-1, 1); any shape."""
    if margin_a == 1.0 and margin_m == 0.0:
        return cos_t - margin_b  # CosFace or none: no arccos needed
    theta = F.np.arccos(F.np.clip(cos_t, -COS_CLIP, COS_CLIP))
    return F.np.cos(margin_a * theta + margin_m) - margin_b


def l2_normalize(F, x):
    """Rows of ``x`` divided by their L2 norm (+NORM_EPS)."""
    return x / (F.np.sqrt(F.np.sum(x * x, axis=1, keepdims=True)) + NORM_EPS)


class ArcMarginBlock(nn.HybridBlock):
    """Combined-margin softmax head (ArcFace by default).

    ``forward(x, y)``: embeddings x (N, emb_size) float32, labels y (N,) -> logits
    (N, num_classes) = s * cos(theta_j), where the target class's cos(theta) is replaced by
    cos(margin_a * theta + margin_m) - margin_b. One parameter ``fc7_weight``
    (num_classes, emb_size), initialised Normal(0.01) at construction.
    """

    def __init__(self, emb_size, num_classes, margin_s=64.0, margin_m=0.5, margin_a=1.0,
                 margin_b=0.0, **kwargs):
        super().__init__(**kwargs)
        self.emb_size, self.num_classes = emb_size, num_classes
        self.margin_s, self.margin_m = float(margin_s), float(margin_m)
        self.margin_a, self.margin_b = float(margin_a), float(margin_b)
        with self.name_scope():
            self.fc7_weight = self.params.get('fc7_weight', shape=(num_classes, emb_size),
                                              init=init.Normal(0.01))
        self.initialize()

    def cosine(self, F, x, fc7_weight):
        """cos(theta) between embeddings and class centres: (N, num_classes)."""
        return F.np.dot(l2_normalize(F, x), l2_normalize(F, fc7_weight).T)

    def hybrid_forward(self, F, x, y, fc7_weight):
        cos_t = self.cosine(F, x, fc7_weight)
        y = y.astype('int32')
        target = F.npx.pick(cos_t, y, axis=1)
        new_target = margin_target_logit(F, target, self.margin_a, self.margin_m, self.margin_b)
        mask = F.npx.one_hot(y, self.num_classes)
        logits = cos_t + mask * F.np.expand_dims(new_target - target, 1)
        return logits * self.margin_s

    def __repr__(self):
        return '%s(%d -> %d, s=%g, m=%g, a=%g, b=%g)' % (
            self.__class__.__name__, self.emb_size, self.num_classes, self.margin_s,
            self.margin_m, self.margin_a, self.margin_b)


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
        return F.npx.fully_connected(x, fc7_weight, fc7_bias, num_hidden=self.num_classes)
