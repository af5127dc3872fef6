"""The benchmark's reference: the same FaceResNet and ArcFace training step in PyTorch.

Only ``gluon_arcface.train.benchmark`` imports this module; it imports PyTorch (not a dependency of
the package) inside its functions, which the benchmark calls only when PyTorch is installed.
The networks mirror ``model.FaceResNet`` / ``TrainBlock`` layer for layer (IR blocks with
PReLU, BN eps 2e-5, batch standardisation, ArcFace s=64 m=0.5), so the images/s compare like
with like. ``bf16=True`` runs the backbone under ``torch.autocast('cpu', dtype=torch.bfloat16)``
and the head and loss in float32, as ``--amp`` does in MXNet.
"""
import numpy as np

from .margin import COS_CLIP, NORM_EPS
from .model import BN_EPS, CHANNELS, PRELU_INIT, STANDARDIZE_EPS, faceresnet_spec

__all__ = ['available', 'torch_module', 'train_case', 'infer_case']

LR, WD = 0.1, 5e-4  # the chapter's plain SGD
_THREADS = {'n': None}


def available():
    """Whether PyTorch can be imported."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def torch_module(threads=None):
    """Import torch with ``threads`` intra-op threads (default: what ``set_threads`` gave, else
    the package's thread policy: the count MXNet computes with).

    MXNet sets the OpenMP thread count of the Python thread to 1 when it starts (its operators
    run in its own engine threads), and torch, which shares the OpenMP runtime, would then run
    on a single thread: set it explicitly.
    """
    import torch
    from ..runtime.threads import thread_info
    torch.set_num_threads(threads or _THREADS['n'] or thread_info()['compute_threads'])
    return torch


def set_threads(threads):
    _THREADS['n'] = threads


def _modules():
    import torch
    from torch import nn
    import torch.nn.functional as F

    class Block(nn.Module):  # BasicBlockV3
        def __init__(self, in_channels, channels, stride, downsample):
            super().__init__()
            self.body = nn.Sequential(
                nn.BatchNorm2d(in_channels, eps=BN_EPS),
                nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False),
                nn.BatchNorm2d(channels, eps=BN_EPS), nn.PReLU(channels, PRELU_INIT),
                nn.Conv2d(channels, channels, 3, stride, 1, bias=False),
                nn.BatchNorm2d(channels, eps=BN_EPS))
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                nn.BatchNorm2d(channels, eps=BN_EPS)) if downsample else None

        def forward(self, x):
            residual = self.downsample(x) if self.downsample is not None else x
            return self.body(x) + residual

    class FaceResNet(nn.Module):
        def __init__(self, units, emb_size, use_dropout, image_size, bf16=False):
            super().__init__()
            self.bf16 = bf16
            layers = [nn.Conv2d(3, CHANNELS[0], 3, 1, 1, bias=False),
                      nn.BatchNorm2d(CHANNELS[0], eps=BN_EPS), nn.PReLU(CHANNELS[0], PRELU_INIT)]
            in_channels = CHANNELS[0]
            for num_units, channels in zip(units, CHANNELS):
                layers.append(Block(in_channels, channels, 2, True))
                layers += [Block(channels, channels, 1, False) for _ in range(num_units - 1)]
                in_channels = channels
            self.features = nn.Sequential(*layers)
            side = image_size // 16
            self.output = nn.Sequential(
                nn.BatchNorm2d(in_channels, eps=BN_EPS),
                *([nn.Dropout(0.4)] if use_dropout else []), nn.Flatten(),
                nn.Linear(in_channels * side * side, emb_size))

        def forward(self, x):
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=self.bf16):
                x = self.features(x)
            return self.output(x.float())

    class ArcFaceTrainNet(nn.Module):  # TrainBlock with ArcMarginBlock (s=64, m=0.5)
        def __init__(self, units, emb_size, num_classes, use_dropout, image_size, bf16=False):
            super().__init__()
            self.feat_net = FaceResNet(units, emb_size, use_dropout, image_size, bf16)
            self.fc7_weight = nn.Parameter(torch.randn(num_classes, emb_size) * 0.01)

        def forward(self, x, y):
            feat = self.feat_net(x)
            feat = (feat - feat.mean(0)) / torch.sqrt(feat.var(0, unbiased=False)
                                                      + STANDARDIZE_EPS)
            x_n = feat / (feat.norm(dim=1, keepdim=True) + NORM_EPS)
            w_n = self.fc7_weight / (self.fc7_weight.norm(dim=1, keepdim=True) + NORM_EPS)
            cos_t = x_n @ w_n.t()
            target = cos_t.gather(1, y[:, None])
            new_target = torch.cos(torch.acos(target.clamp(-COS_CLIP, COS_CLIP)) + 0.5)
            mask = F.one_hot(y, cos_t.shape[1]).to(cos_t.dtype)
            return (cos_t + mask * (new_target - target)) * 64.0

    return FaceResNet, ArcFaceTrainNet


def _batch(batch_size, image_size, num_classes, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.uniform(size=(batch_size, 3, image_size, image_size)).astype('float32')
    y = rng.randint(0, num_classes, size=batch_size)
    return X, y


def train_case(channels_last, bf16=False, num_layers=18, batch_size=32, image_size=112,
               num_classes=300, emb_size=256):
    """One SGD step of the ArcFace network in PyTorch (CPU) -> ``step()``."""
    torch = torch_module()
    import torch.nn.functional as F
    _, ArcFaceTrainNet = _modules()
    torch.manual_seed(0)
    net = ArcFaceTrainNet(faceresnet_spec(num_layers), emb_size, num_classes,
                          num_classes <= 20000, image_size, bf16)
    X, y = _batch(batch_size, image_size, num_classes)
    X, y = torch.from_numpy(X), torch.from_numpy(y).long()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        X = X.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=LR, weight_decay=WD)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(X, y), y, reduction='sum') / batch_size
        loss.backward()
        loss.item()
        optimizer.step()
    return step


def infer_case(channels_last=True, bf16=False, num_layers=18, batch_size=64, image_size=112,
               emb_size=256):
    """PyTorch embeddings of one batch (eval mode, no_grad) -> ``step()``."""
    torch = torch_module()
    FaceResNet, _ = _modules()
    torch.manual_seed(0)
    net = FaceResNet(faceresnet_spec(num_layers), emb_size, False, image_size, bf16).eval()
    X = torch.from_numpy(_batch(batch_size, image_size, 1)[0])
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        X = X.contiguous(memory_format=torch.channels_last)

    def step():
        with torch.no_grad():
            return net(X).numpy()
    return step
