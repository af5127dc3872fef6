"""FaceResNet backbones and the chapter's TrainBlock / TestBlock.

FaceResNet is the "IR" ResNet of ArcFace for 112x112 faces: a stride-1 stem, four stages that each
begin with a stride-2 block, and an embedding head (BN, optional Dropout, Flatten, Dense).
All blocks use NumPy semantics (``npx.set_np()``, called when the package is imported).

Speed on CPU: MXNet 1.9.1's own PReLU (``LeakyReLU(act_type='prelu')``) is not a oneDNN operator;
its kernel (the per-channel slope gradient in particular) and the layout reorders around it cost
about half of a training step. With ``fast=True`` (the default) the blocks compute the very same
function with oneDNN operators only: in each residual unit, BN2 + PReLU + conv2 become a BatchNorm
and a fused BatchNorm+ReLU with rescaled gamma/beta, a sum, and conv2 with sign-adjusted weights
(:func:`bn_prelu_conv`); the stem's PReLU is ``alpha*x + (1-alpha)*relu(x)`` with two depthwise
1x1 convolutions (:class:`PReLU`); the residual sum is the legacy ``elemwise_add`` (oneDNN sum)
instead of the NumPy ``+``. Parameter names, shapes and values are those of the plain blocks
(``fast=False``: ``nn.PReLU`` and ``+``), so checkpoints load into either.
:func:`inference_net` makes a frozen copy for inference with MXNet's oneDNN graph fusion.
"""
import os

import numpy as np
from ..runtime import _mxnet  # noqa: F401  (NumPy semantics, first)
from mxnet import init
from mxnet.gluon import nn

from ..runtime.devices import as_contexts
from ..runtime.errors import ConfigError
from .margin import ArcMarginBlock

__all__ = ['BasicBlockV3', 'FaceResNet', 'get_faceresnet', 'faceresnet_spec',
           'TrainBlock', 'TestBlock', 'PReLU', 'bn_prelu_conv', 'inference_net',
           'inference_nets', 'mkldnn_enabled', 'dropout_rate', 'BN_EPS', 'STANDARDIZE_EPS',
           'PRELU_INIT', 'CHAPTER_DROPOUT', 'COMPUTE_DTYPES', 'set_compute_dtype',
           'compute_dtype_of', 'backbone_of', 'estimate_step_memory']

BN_EPS = 2e-5
STANDARDIZE_EPS = 2e-5
PRELU_INIT = 0.25  # InsightFace's initial PReLU slope
CHAPTER_DROPOUT = 0.4  # before the embedding layer, when use_dropout
CHANNELS = (64, 128, 256, 512)
UNITS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}


def depth_of_units(units):
    """The depth (18, 34, 50, 100) with ``units`` residual units per stage; None for others."""
    return {v: k for k, v in UNITS.items()}.get(tuple(units))


def faceresnet_spec(num_layers):
    """Units per stage for a FaceResNet depth (18, 34, 50 or 100)."""
    if num_layers not in UNITS:
        raise ValueError('FaceResNet depth must be one of %s, got %r'
                         % (sorted(UNITS), num_layers))
    return UNITS[num_layers]


class _Precision:
    """The compute dtype of a block (float32 unless :func:`set_compute_dtype` says otherwise)."""

    compute_dtype = 'float32'


class PReLU(_Precision, nn.HybridBlock):
    """Per-channel PReLU, ``f(x) = x`` where ``x > 0`` and ``alpha[c] * x`` elsewhere, from oneDNN
    operators: ``alpha * x + (1 - alpha) * relu(x)``.

    The two per-channel scales are depthwise 1x1 convolutions whose weights are ``alpha`` and
    ``1 - alpha``, so the slope gradient is a oneDNN weight gradient and no layout reorder is
    needed between the surrounding convolutions. Same parameter as ``gluon.nn.PReLU``: ``alpha``
    of shape ``(in_channels,)`` (and the same name prefix, ``prelu<i>_``), so the two are
    interchangeable in checkpoints; ``alpha_initializer`` defaults to Constant(0.25). Input:
    (N, C, H, W) with C = ``in_channels``.
    """

    def __init__(self, in_channels, alpha_initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.in_channels = in_channels
        if alpha_initializer is None:
            alpha_initializer = init.Constant(PRELU_INIT)
        with self.name_scope():
            self.alpha = self.params.get('alpha', shape=(in_channels,), init=alpha_initializer)

    def _alias(self):
        return 'prelu'  # the prefix of gluon.nn.PReLU, hence the same parameter names

    def hybrid_forward(self, F, x, alpha):
        c = self.in_channels
        x = x.as_nd_ndarray()  # legacy operators: Convolution/Activation/elemwise_add are oneDNN
        slope = F.reshape(alpha.as_nd_ndarray(), shape=(c, 1, 1, 1))
        rest = _cast(F, 1 - slope, self.compute_dtype)
        slope = _cast(F, slope, self.compute_dtype)
        linear = F.Convolution(x, slope, kernel=(1, 1), num_filter=c, num_group=c, no_bias=True)
        positive = F.Convolution(F.Activation(x, act_type='relu'), rest, kernel=(1, 1),
                                 num_filter=c, num_group=c, no_bias=True)
        return F.elemwise_add(linear, positive).as_np_ndarray()

    def __repr__(self):
        return '%s(%d)' % (self.__class__.__name__, self.in_channels)


def _prelu(channels, fast=True):
    # One learned slope per channel, initialised at 0.25 as in InsightFace.
    if fast:
        return PReLU(channels)
    return nn.PReLU(alpha_initializer=init.Constant(PRELU_INIT), in_channels=channels)


def _add(F, a, b, fast):
    """a + b; with ``fast`` the legacy elemwise_add, a oneDNN sum without layout reorders."""
    if fast:
        return F.elemwise_add(a.as_nd_ndarray(), b.as_nd_ndarray()).as_np_ndarray()
    return a + b


def _legacy(v):
    return v.as_nd_ndarray() if hasattr(v, 'as_nd_ndarray') else v


# MXNet 1.9 spells bfloat16 as this numpy structured dtype in Python.
_MX_DTYPES = {'bfloat16': np.dtype([('bfloat16', np.uint16)])}


def _cast(F, v, dtype):
    """``v`` (legacy array/symbol) in ``dtype``; ``amp_cast``'s gradient goes back in v's dtype,
    so float32 weights get float32 gradients."""
    return v if dtype == 'float32' else F.amp_cast(v, dtype=_MX_DTYPES.get(dtype, dtype))


def _conv(F, x, conv, dtype):
    """``conv(x)``; in a low-precision ``dtype`` the float32 weight is cast inside the graph."""
    if dtype == 'float32':
        return conv(x)
    (weight,) = _param_inputs(F, x, [conv.weight])
    return F.Convolution(_legacy(x), _cast(F, weight, dtype), **conv._kwargs).as_np_ndarray()


def _param_inputs(F, like, params):
    """The arrays (imperative) or variables (hybridized) of child blocks' parameters, as legacy
    arrays/symbols, to use them in a parent's hybrid_forward."""
    import mxnet as mx
    if F is mx.sym:
        return [_legacy(p.var()) for p in params]
    return [_legacy(p.data(like.ctx)) for p in params]


def _fused_relu_available(block):
    """Whether oneDNN's BatchNorm+ReLU (``_contrib_BatchNormWithReLU``) runs here: oneDNN on and
    the parameters on CPU."""
    if not mkldnn_enabled():
        return False
    try:
        return all(c.device_type == 'cpu' for c in block.gamma.list_ctx())
    except RuntimeError:  # not initialised yet: the default context
        import mxnet as mx
        return mx.current_context().device_type == 'cpu'


def bn_prelu_conv(F, z, bn, prelu, conv, dtype='float32'):
    """``conv(prelu(bn(z)))`` with oneDNN operators only, from the three blocks' parameters.

    With ``y = bn(z)`` and, per channel, ``k = 1 - alpha`` and ``s = +1`` if ``k >= 0`` else -1:
    ``prelu(y) = alpha*y + k*relu(y) = s * (s*alpha*y + relu(|k|*y))``. BatchNorm is affine in
    its gamma and beta, so ``s*alpha*y`` is BatchNorm(z) with gamma and beta scaled by
    ``s*alpha``, and ``relu(|k|*y)`` is the fused BatchNorm+ReLU with them scaled by ``|k|``
    (``|k| >= 0`` commutes with relu); both see the same batch statistics, and only the first
    updates the running statistics (the second has momentum 1). The sign ``s`` goes into the
    convolution's weights (per input channel): a small weight-side product instead of a pass
    over the activations. No per-channel activation kernel, no layout reorder, and the slope
    gradient comes from BatchNorm's gamma/beta gradients. (At ``alpha == 1`` exactly the slope
    gradient is one-sided: ``y`` instead of ``min(y, 0)``.) ``dtype``: the compute dtype of
    ``z`` and of the convolution (BatchNorm's parameters stay float32).
    """
    gamma, beta, mean, var, alpha, weight = _param_inputs(
        F, z, [bn.gamma, bn.beta, bn.running_mean, bn.running_var, prelu.alpha, conv.weight])
    z = z.as_nd_ndarray()
    k = 1 - alpha
    sign = 2 * (k >= 0) - 1
    ak = sign * k  # |k|
    sa = sign * alpha
    options = dict(bn._kwargs)
    linear = F.BatchNorm(z, sa * gamma, sa * beta, mean, var, **options)
    options['momentum'] = 1.0  # the running statistics are updated once, by `linear`
    if _fused_relu_available(bn):
        positive = F.contrib.BatchNormWithReLU(z, ak * gamma, ak * beta, mean, var, **options)
    else:
        positive = F.Activation(F.BatchNorm(z, ak * gamma, ak * beta, mean, var, **options),
                                act_type='relu')
    u = F.elemwise_add(linear, positive)
    # elemwise_mul with a full-size sign: broadcast_mul's backward would reduce over the weight
    # for the (unused) gradient of the sign, a slow pass.
    sign = F.BlockGrad(F.broadcast_like(F.reshape(sign, shape=(1, -1, 1, 1)), weight))
    weight = _cast(F, F.elemwise_mul(weight, sign), dtype)
    return F.Convolution(u, weight, **conv._kwargs).as_np_ndarray()


class BasicBlockV3(_Precision, nn.HybridBlock):
    """The "IR" residual unit: BN-conv3x3-BN-PReLU-conv3x3(stride)-BN plus a shortcut.

    The shortcut is conv1x1(stride)+BN when ``downsample``, else the identity. No activation
    follows the sum. ``fast`` selects the oneDNN-only operators (see the module notes); the
    function and the parameters are the same either way.
    """

    def __init__(self, channels, stride, downsample=False, in_channels=0, fast=True, **kwargs):
        super().__init__(**kwargs)
        self.fast = fast
        with self.name_scope():
            self.body = nn.HybridSequential(prefix='')
            self.body.add(nn.BatchNorm(epsilon=BN_EPS, in_channels=in_channels),
                          nn.Conv2D(channels, 3, 1, 1, use_bias=False, in_channels=in_channels),
                          nn.BatchNorm(epsilon=BN_EPS, in_channels=channels),
                          _prelu(channels, fast),
                          nn.Conv2D(channels, 3, stride, 1, use_bias=False, in_channels=channels),
                          nn.BatchNorm(epsilon=BN_EPS, in_channels=channels))
            if downsample:
                self.downsample = nn.HybridSequential(prefix='')
                self.downsample.add(nn.Conv2D(channels, 1, stride, use_bias=False,
                                              in_channels=in_channels),
                                    nn.BatchNorm(epsilon=BN_EPS, in_channels=channels))
            else:
                self.downsample = None

    def hybrid_forward(self, F, x):
        dtype = self.compute_dtype
        residual = x
        if self.downsample is not None:
            residual = self.downsample[1](_conv(F, x, self.downsample[0], dtype))
        if not self.fast:
            return self.body(x) + residual
        bn1, conv1, bn2, prelu, conv2, bn3 = self.body
        # BN2, PReLU and conv2 from their parameters with oneDNN operators (bn_prelu_conv).
        out = bn3(bn_prelu_conv(F, _conv(F, bn1(x), conv1, dtype), bn2, prelu, conv2, dtype))
        return _add(F, out, residual, True)


class FaceResNet(_Precision, nn.HybridBlock):
    """ResNet for aligned faces: (N, 3, H, W) float32 -> (N, emb_size) embeddings.

    ``units`` gives the residual units per stage (channels 64, 128, 256, 512); each stage halves
    the resolution, so 112x112 inputs end at 7x7x512 before the embedding head.
    ``use_dropout``: True for the chapter's Dropout(0.4) before the embedding layer, a number for
    another rate, False (or 0) for none. ``fast=False`` builds the plain blocks (``nn.PReLU``,
    NumPy ``+``): same function, same parameters, slower on CPU. ``input_norm``: ``(mean,
    scale)``, the input becomes ``(x - mean) * scale`` first; a network mapped from InsightFace
    (trained on ``(pixel - 127.5) / 128``) takes the package's [0, 1] images with (0.5, 1.9921875).
    """

    @property
    def num_layers(self):
        """The depth (18, 34, 50, 100) of these units per stage; None for other units."""
        return depth_of_units(self.units)

    def __init__(self, units, emb_size=256, use_dropout=False, fast=True, input_norm=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.units, self.emb_size, self.fast = tuple(units), emb_size, fast
        self.input_norm = tuple(float(v) for v in input_norm) if input_norm else None
        with self.name_scope():
            self.features = nn.HybridSequential(prefix='')
            self.features.add(nn.Conv2D(CHANNELS[0], 3, 1, 1, use_bias=False, in_channels=3),
                              nn.BatchNorm(epsilon=BN_EPS, in_channels=CHANNELS[0]),
                              _prelu(CHANNELS[0], fast))
            in_channels = CHANNELS[0]
            for num_units, channels in zip(units, CHANNELS):
                stage = nn.HybridSequential(prefix='')
                stage.add(BasicBlockV3(channels, 2, downsample=True, in_channels=in_channels,
                                       fast=fast))
                for _ in range(num_units - 1):
                    stage.add(BasicBlockV3(channels, 1, in_channels=channels, fast=fast))
                self.features.add(stage)
                in_channels = channels
            self.output = nn.HybridSequential(prefix='')
            self.output.add(nn.BatchNorm(epsilon=BN_EPS, in_channels=in_channels))
            rate = dropout_rate(use_dropout)
            if rate:
                self.output.add(nn.Dropout(rate))
            self.output.add(nn.Flatten(), nn.Dense(emb_size))

    def hybrid_forward(self, F, x):
        if self.input_norm:
            x = (x - self.input_norm[0]) * self.input_norm[1]
        dtype = self.compute_dtype
        if dtype == 'float32':
            return self.output(self.features(x))
        conv, bn, prelu = list(self.features)[:3]
        x = prelu(bn(_conv(F, _cast(F, _legacy(x), dtype).as_np_ndarray(), conv, dtype)))
        for stage in list(self.features)[3:]:
            x = stage(x)
        # The embedding layer and everything after it (standardisation, margin head, loss) in
        # float32.
        return self.output(F.amp_cast(_legacy(x), dtype='float32').as_np_ndarray())


# Peak memory of a training step on CPU, measured with scripts/benchmark.py's memory cases
# (FaceResNet-18, 112x112, SGD with momentum): 774 MB at batch 8, 2305 MB at batch 32, i.e.
# 64 MB per image (33 MB with bfloat16) above what the parameters take.
_STEP_MB_PER_IMAGE = {'float32': 64.0, 'bfloat16': 33.0, 'float16': 33.0}


def _activation_units(units, image_size):
    """Activation elements a training step keeps per image (stem + residual stages), up to a
    constant: what the memory of a step scales with."""
    h, w = image_size
    total = 64 * h * w  # the stem, at full resolution
    for i, (count, channels) in enumerate(zip(units, CHANNELS)):
        total += count * channels * (h >> (i + 1)) * (w >> (i + 1))
    return total


def estimate_step_memory(num_layers, image_size, batch_size, emb_size=256, num_classes=1000,
                         dtype='float32'):
    """Bytes a training step of FaceResNet-``num_layers`` on the CPU needs: the activations of
    ``batch_size`` images of ``image_size`` (scaled from FaceResNet-18 at 112x112, measured),
    and the parameters with their gradients and momentum (fc7 included). An estimate, to warn
    before the operating system kills a run that cannot fit."""
    units = faceresnet_spec(num_layers)
    scale = _activation_units(units, image_size) / _activation_units(UNITS[18], (112, 112))
    per_image = _STEP_MB_PER_IMAGE[dtype] * scale * 2 ** 20
    h, w = image_size
    # Backbone parameters (IR units: two 3x3 convolutions per unit) and the embedding layer.
    params = 64 * 27 + sum(count * 2 * 9 * c * c for count, c in zip(units, CHANNELS))
    params += 512 * (h // 16) * (w // 16) * emb_size + num_classes * emb_size
    return int(batch_size * per_image + params * 4 * 3 + 200 * 2 ** 20)


def dropout_rate(use_dropout):
    """The Dropout rate of ``use_dropout``: True -> the chapter's 0.4, False -> 0, a number as
    it is (in [0, 1))."""
    if use_dropout is True:
        return CHAPTER_DROPOUT
    rate = float(use_dropout or 0.0)
    if not 0.0 <= rate < 1.0:
        raise ValueError('dropout rate must be in [0, 1), got %r' % use_dropout)
    return rate


def get_faceresnet(num_layers, emb_size=256, use_dropout=False, do_init=True, fast=True,
                   **kwargs):
    """Build FaceResNet-``num_layers`` with an ``emb_size``-d embedding (the chapter's helper).

    Parameters
    ----------
    num_layers : {18, 34, 50, 100}
        Depth: residual units per stage (2,2,2,2), (3,4,6,3), (3,4,14,3), (3,13,30,3).
    emb_size : int
        Embedding size D.
    use_dropout : bool or float
        Dropout before the embedding layer: True for the chapter's 0.4, or a rate.
    do_init : bool
        Initialise the parameters (Xavier gaussian, factor 'out', magnitude 2; PReLU slopes
        0.25); the Dense input size is inferred at the first forward pass. A TestBlock passes
        False: it takes its parameters from a TrainBlock.
    fast : bool
        The oneDNN-only blocks (default) or the plain ones (``nn.PReLU``): same function, same
        parameter names.
    **kwargs
        FaceResNet's (``input_norm``, ``prefix``, ``params``).

    Returns
    -------
    FaceResNet
        ``net(x) -> (N, emb_size)`` for x (N, 3, H, W) float32 in [0, 1], H and W multiples of
        16 (112x112 faces: a 7x7x512 map before the embedding layer).
    """
    net = FaceResNet(faceresnet_spec(num_layers), emb_size, use_dropout, fast=fast, **kwargs)
    if do_init:
        net.initialize(init.Xavier(rnd_type='gaussian', factor_type='out', magnitude=2))
    return net


class TrainBlock(nn.HybridBlock):
    """The chapter's training network: FaceResNet, batch standardisation, ArcMarginBlock.

    ``forward(x, y)``: x (N, 3, H, W) float32, y (N,) class ids -> logits (N, num_classes).
    The embeddings are standardised per dimension over the batch (per device shard under data
    parallelism) before the margin head. ``margin`` holds ArcMarginBlock's keyword arguments;
    ``head`` replaces the margin head by another block taking ``(emb, y)`` (e.g. SoftmaxBlock).
    ``fast=False`` builds the plain FaceResNet blocks (``nn.PReLU``; same function and names).
    ``backbone``: a callable building another feature network in place of the FaceResNet
    (e.g. ``functools.partial(DlibResNet, ...)``; its output size must be ``emb_size``).
    """

    def __init__(self, num_layers, emb_size, num_classes, use_dropout, margin=None, head=None,
                 fast=True, input_norm=None, backbone=None, **kwargs):
        super().__init__(**kwargs)
        self.num_layers, self.emb_size, self.num_classes = num_layers, emb_size, num_classes
        self.use_dropout, self.fast, self.input_norm = use_dropout, fast, input_norm
        self.backbone = backbone
        with self.name_scope():
            # prefix='' keeps feat_net's parameter names equal to the TestBlock's.
            self.feat_net = nn.HybridSequential(prefix='')
            if backbone is None:
                self.feat_net.add(get_faceresnet(num_layers, emb_size, use_dropout,
                                                 do_init=True, fast=fast, input_norm=input_norm))
            else:
                self.feat_net.add(backbone())
                self.feat_net.initialize()  # default values, until weights are loaded
            if head is not None:
                self.margin_block = head
            else:
                self.margin_block = ArcMarginBlock(emb_size, num_classes, **(margin or {}))

    def hybrid_forward(self, F, x, y):
        feat = self.feat_net(x)
        mean = F.np.mean(feat, axis=0)
        std = F.np.sqrt(F.np.var(feat, axis=0) + STANDARDIZE_EPS)
        return self.margin_block((feat - mean) / std, y)


class TestBlock(nn.HybridBlock):
    """The chapter's embedding network: the TrainBlock's feat_net without standardisation.

    ``TestBlock(num_layers, emb_size, use_dropout, params=train_net.collect_params())`` shares
    the TrainBlock's parameters (by name), so later training updates show here.
    ``forward(x)``: (N, 3, H, W) float32 in [0, 1] -> (N, emb_size) float32. ``backbone``:
    the TrainBlock's, when it has another feature network than FaceResNet.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, num_layers, emb_size, use_dropout, fast=True, input_norm=None,
                 backbone=None, **kwargs):
        super().__init__(**kwargs)
        self.num_layers, self.emb_size, self.fast = num_layers, emb_size, fast
        self.use_dropout, self.input_norm, self.backbone = use_dropout, input_norm, backbone
        with self.name_scope():
            self.feat_net = nn.HybridSequential(prefix='')
            self.feat_net.add(backbone() if backbone is not None else get_faceresnet(
                num_layers, emb_size, use_dropout, do_init=False, fast=fast,
                input_norm=input_norm))

    def hybrid_forward(self, F, x):
        return self.feat_net(x)


def backbone_of(net):
    """The (first) FaceResNet in ``net``: itself, a TrainBlock's, TestBlock's or FeatBlock's
    ``feat_net``, a ModelParallelNet's; None when there is none (e.g. a SymbolBlock)."""
    if not hasattr(net, '_children'):
        return None
    for block in _blocks(net):
        if isinstance(block, FaceResNet):
            return block
    return None


def mkldnn_enabled():
    """Whether this MXNet build runs oneDNN (MKLDNN) operators (and MXNET_MKLDNN_ENABLED != 0)."""
    try:
        from mxnet.runtime import Features
        built = Features().is_enabled('MKLDNN')
    except Exception:  # pragma: no cover - very old or unusual builds
        return False
    return built and os.environ.get('MXNET_MKLDNN_ENABLED', '1') != '0'


def inference_net(net, input_shape=None, ctx=None, backend='auto', warmup=True, dtype=None):
    """A frozen copy of an embedding network for the fastest correct inference on this build.

    The copy is a FaceResNet with the oneDNN-friendly blocks (``fast=True``) holding copies of
    the current parameter values, hybridized with static shapes and, on CPU with oneDNN,
    MXNet's oneDNN graph fusion (convolution+BatchNorm folding, convolution+sum and
    convolution+ReLU fusion). The fused operators fold the weights once, so the copy does not
    follow later training updates: build a new one after the parameters change (about a
    second for FaceResNet-18). ``compute_embeddings`` uses it.

    Parameters
    ----------
    net : TestBlock, FaceResNet or TrainBlock
        The network (a TrainBlock's FaceResNet is taken; its head is not needed).
    input_shape : tuple of int, optional
        (N, 3, H, W): completes a deferred initialisation of ``net`` if needed and, with
        ``warmup``, builds the graph at once for that shape.
    ctx : Context, optional
        Where the copy runs (default: where ``net``'s parameters are).
    backend : {'auto', 'MKLDNN', None}
        Graph fusion: 'auto' uses MKLDNN on a CPU context of a build with oneDNN.
    warmup : bool
        Build the graph now (needs ``input_shape``).
    dtype : {None, 'float32', 'bfloat16'}
        Compute dtype of the copy (``set_compute_dtype``; default: ``net``'s).

    Returns
    -------
    FaceResNet
        ``block(x) -> embeddings``: x (N, 3, H, W) float32 in [0, 1] -> (N, emb_size) float32,
        not normalised; call it in predict mode.
    """
    from mxnet import autograd
    from mxnet import np as mnp
    source = backbone_of(net)
    if source is None:
        raise TypeError('inference_net takes a FaceResNet, TestBlock or TrainBlock, got %s'
                        % type(net).__name__)
    params = source._collect_params_with_prefix()
    ctx = as_contexts(ctx, source)[0]
    if any(p._deferred_init for p in params.values()):  # e.g. the Dense input size
        if input_shape is None:
            raise ValueError('the network has not run yet (deferred initialisation): pass '
                             'input_shape')
        with autograd.predict_mode():
            source(mnp.zeros((1,) + tuple(input_shape[1:]), ctx=ctx)).wait_to_read()
    units = tuple(len(stage) for stage in list(source.features)[3:])
    use_dropout = any(isinstance(b, nn.Dropout) for b in source.output)  # inert when predicting
    copy = FaceResNet(units, source.emb_size, use_dropout, fast=True,
                      input_norm=source.input_norm)
    set_compute_dtype(copy, dtype or source.compute_dtype)
    targets = copy._collect_params_with_prefix()
    for name, param in params.items():
        data = param.data(ctx)
        targets[name].shape = data.shape  # the Dense input size may still be deferred
        targets[name].initialize(init.Zero(), ctx=ctx)
        targets[name].set_data(data)
    if backend == 'auto':
        backend = 'MKLDNN' if ctx.device_type == 'cpu' and mkldnn_enabled() else None
    if backend:
        copy.hybridize(static_alloc=True, static_shape=True, backend=backend)
    else:
        copy.hybridize(static_alloc=True, static_shape=True)
    if input_shape is not None and warmup:
        with autograd.predict_mode():
            copy(mnp.zeros(tuple(input_shape), ctx=ctx)).wait_to_read()
    return copy


def inference_nets(net, ctx, input_shape=None, dtype=None):
    """One :func:`inference_net` copy of ``net`` per context in ``ctx`` (a list), or ``net``
    itself for each when it is not a FaceResNet-based block (e.g. a SymbolBlock)."""
    if backbone_of(net) is None:
        if dtype not in (None, 'float32'):
            raise ConfigError('dtype %s needs a FaceResNet-based network, got %s'
                              % (dtype, type(net).__name__))
        return [net] * len(ctx)
    return [inference_net(net, input_shape, ctx=c, warmup=False, dtype=dtype) for c in ctx]


COMPUTE_DTYPES = ('float32', 'bfloat16', 'float16')


def set_compute_dtype(net, dtype='float32'):
    """Run ``net``'s FaceResNet backbone(s) in ``dtype``: 'float32', 'bfloat16' (CPUs with
    AVX512-BF16 or AMX) or 'float16' (GPUs).

    Mixed precision: the parameters stay float32 (master weights, optimizer state and
    checkpoints unchanged); the convolutions and activations of the residual stages run in
    ``dtype``, each weight cast inside the graph (its gradient comes back in float32);
    BatchNorm keeps float32 parameters and statistics; the embedding layer, and whatever
    follows it (standardisation, margin head, loss), run in float32. Needs the oneDNN blocks
    (``fast=True``). A hybridized network rebuilds its graph at its next call. Returns ``net``.
    """
    if dtype not in COMPUTE_DTYPES:
        raise ValueError('compute dtype must be one of %s, got %r' % (COMPUTE_DTYPES, dtype))
    found = False
    for block in _blocks(net):
        if isinstance(block, (FaceResNet, BasicBlockV3, PReLU)):
            if dtype != 'float32' and not getattr(block, 'fast', True):
                raise ValueError('mixed precision needs the oneDNN blocks (fast=True): MXNet '
                                 '1.9.1 has no low-precision PReLU')
            block.compute_dtype = dtype
            found = True
        if isinstance(block, nn.HybridBlock):
            block._clear_cached_op()
    if not found:
        raise TypeError('%s has no FaceResNet backbone' % type(net).__name__)
    return net


def compute_dtype_of(net):
    """The compute dtype of ``net``'s (first) FaceResNet backbone."""
    backbone = backbone_of(net)
    if backbone is None:
        raise TypeError('%s has no FaceResNet backbone' % type(net).__name__)
    return backbone.compute_dtype


def _blocks(block):
    yield block
    for child in block._children.values():
        yield from _blocks(child)
