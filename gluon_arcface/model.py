"""FaceResNet backbones and the chapter's TrainBlock / TestBlock.

FaceResNet is the "IR" ResNet of ArcFace for 112x112 faces: a stride-1 stem, four stages that each
begin with a stride-2 block, and an embedding head (BN, optional Dropout, Flatten, Dense).
All blocks use NumPy semantics (``npx.set_np()``, called when the package is imported).
"""
from mxnet import init
from mxnet.gluon import nn

from .margin import ArcMarginBlock

__all__ = ['BasicBlockV3', 'FaceResNet', 'get_faceresnet', 'faceresnet_spec',
           'TrainBlock', 'TestBlock', 'BN_EPS', 'STANDARDIZE_EPS']

BN_EPS = 2e-5
STANDARDIZE_EPS = 2e-5
CHANNELS = (64, 128, 256, 512)
UNITS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}


def faceresnet_spec(num_layers):
    """Units per stage for a FaceResNet depth (18, 34, 50 or 100)."""
    if num_layers not in UNITS:
        raise ValueError('FaceResNet depth must be one of %s, got %r'
                         % (sorted(UNITS), num_layers))
    return UNITS[num_layers]


def _prelu(channels):
    # One learned slope per channel, initialised at 0.25 as in InsightFace.
    return nn.PReLU(alpha_initializer=init.Constant(0.25), in_channels=channels)


class BasicBlockV3(nn.HybridBlock):
    """The "IR" residual unit: BN-conv3x3-BN-PReLU-conv3x3(stride)-BN plus a shortcut.

    The shortcut is conv1x1(stride)+BN when ``downsample``, else the identity. No activation
    follows the sum.
    """

    def __init__(self, channels, stride, downsample=False, in_channels=0, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.body = nn.HybridSequential(prefix='')
            self.body.add(nn.BatchNorm(epsilon=BN_EPS, in_channels=in_channels),
                          nn.Conv2D(channels, 3, 1, 1, use_bias=False, in_channels=in_channels),
                          nn.BatchNorm(epsilon=BN_EPS, in_channels=channels),
                          _prelu(channels),
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
        residual = self.downsample(x) if self.downsample is not None else x
        return self.body(x) + residual


class FaceResNet(nn.HybridBlock):
    """ResNet for aligned faces: (N, 3, H, W) float32 -> (N, emb_size) embeddings.

    ``units`` gives the residual units per stage (channels 64, 128, 256, 512); each stage halves
    the resolution, so 112x112 inputs end at 7x7x512 before the embedding head.
    """

    def __init__(self, units, emb_size=256, use_dropout=False, **kwargs):
        super().__init__(**kwargs)
        self.emb_size = emb_size
        with self.name_scope():
            self.features = nn.HybridSequential(prefix='')
            self.features.add(nn.Conv2D(CHANNELS[0], 3, 1, 1, use_bias=False, in_channels=3),
                              nn.BatchNorm(epsilon=BN_EPS, in_channels=CHANNELS[0]),
                              _prelu(CHANNELS[0]))
            in_channels = CHANNELS[0]
            for num_units, channels in zip(units, CHANNELS):
                stage = nn.HybridSequential(prefix='')
                stage.add(BasicBlockV3(channels, 2, downsample=True, in_channels=in_channels))
                for _ in range(num_units - 1):
                    stage.add(BasicBlockV3(channels, 1, in_channels=channels))
                self.features.add(stage)
                in_channels = channels
            self.output = nn.HybridSequential(prefix='')
            self.output.add(nn.BatchNorm(epsilon=BN_EPS, in_channels=in_channels))
            if use_dropout:
                self.output.add(nn.Dropout(0.4))
            self.output.add(nn.Flatten(), nn.Dense(emb_size))

    def hybrid_forward(self, F, x):
        return self.output(self.features(x))


def get_faceresnet(num_layers, emb_size=256, use_dropout=False, do_init=True, **kwargs):
    """Build FaceResNet-``num_layers`` (18, 34, 50, 100) with an ``emb_size``-d embedding.

    With ``do_init`` the parameters are initialised (Xavier gaussian, factor 'out', magnitude 2;
    PReLU slopes 0.25); the Dense input size is inferred at the first forward pass. A TestBlock
    passes ``do_init=False`` because it takes its parameters from a TrainBlock.
    """
    net = FaceResNet(faceresnet_spec(num_layers), emb_size, use_dropout, **kwargs)
    if do_init:
        net.initialize(init.Xavier(rnd_type='gaussian', factor_type='out', magnitude=2))
    return net


class TrainBlock(nn.HybridBlock):
    """The chapter's training network: FaceResNet, batch standardisation, ArcMarginBlock.

    ``forward(x, y)``: x (N, 3, H, W) float32, y (N,) class ids -> logits (N, num_classes).
    The embeddings are standardised per dimension over the batch (per device shard under data
    parallelism) before the margin head. ``margin`` holds ArcMarginBlock's keyword arguments;
    ``head`` replaces the margin head by another block taking ``(emb, y)`` (e.g. SoftmaxBlock).
    """

    def __init__(self, num_layers, emb_size, num_classes, use_dropout, margin=None, head=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_layers, self.emb_size, self.num_classes = num_layers, emb_size, num_classes
        self.use_dropout = use_dropout
        with self.name_scope():
            # prefix='' keeps feat_net's parameter names equal to the TestBlock's.
            self.feat_net = nn.HybridSequential(prefix='')
            self.feat_net.add(get_faceresnet(num_layers, emb_size, use_dropout, do_init=True))
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
    ``forward(x)``: (N, 3, H, W) float32 in [0, 1] -> (N, emb_size) float32.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, num_layers, emb_size, use_dropout, **kwargs):
        super().__init__(**kwargs)
        self.num_layers, self.emb_size = num_layers, emb_size
        with self.name_scope():
            self.feat_net = nn.HybridSequential(prefix='')
            self.feat_net.add(get_faceresnet(num_layers, emb_size, use_dropout, do_init=False))

    def hybrid_forward(self, F, x):
        return self.feat_net(x)
