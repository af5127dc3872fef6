"""Embeddings for deployment: the chapter's get_embedding, images from files, face comparison,
and export of the embedding network (symbol + params) for serving.

Images go into the network exactly as in training and verification: RGB, (3, H, W) float32 in
[0, 1]. Embeddings of an image and of its mirror image are summed and L2-normalised, as in the
verification protocols, so a threshold chosen by verification applies to ``compare_faces``.

Ordinary photos (a face somewhere in a larger frame) are first detected and aligned to the
ArcFace template (:mod:`gluon_arcface.data.detect`, dlib): ``embed_photos``, ``compare_photos``,
``FaceEmbedder.compare(a, b, photos=True)``.

``verify_model``: a model named as ``scripts/verify.py --model`` takes it, verified on ``.bin``
sets (what that script runs).
"""
import collections
import os

import numpy as np
from ..runtime import _mxnet  # noqa: F401  (NumPy semantics, first)
from mxnet import np as mnp

from ..data.images import decode_image, resize_face, to_network_input
from ..runtime.devices import as_contexts
from ..runtime.errors import FaceDataError
from ..nn.embed import compute_embeddings, l2_normalize

__all__ = ['get_embedding', 'preprocess', 'embed_images', 'embed_files', 'cosine_similarity',
           'compare_faces', 'FaceEmbedder', 'load_photo', 'photo_faces', 'embed_photos',
           'compare_photos', 'PhotoComparison', 'DEFAULT_THRESHOLDS', 'verify_model',
           'landmark_model', 'model_record']

#: Cosine thresholds of named pretrained models that have none in their model.json, measured
#: (docs/own_photos.md, "From your photos to a dataset"): dlib-resnet-v1's is the mean 10-fold
#: threshold of its verification of Yale B photos pasted into larger frames, detected and
#: aligned (the 129 of the first 300 pairs of yaleb_val.bin where both faces were found;
#: scripts/measure_detection.py verification). Face crops re-aligned to ArcFace's template from
#: their landmarks (``prepare_data.py realign``) give 0.920 (yaleb_val, 10-fold).
DEFAULT_THRESHOLDS = {'dlib-resnet-v1': 0.915}


def get_embedding(img, net, ctx=None):
    """The chapter's get_embedding: RGB uint8 (H, W, 3) -> raw embedding (1, emb_size), an
    ``mxnet.np`` float32 array on the first device of ``ctx``; not normalised."""
    ctx = as_contexts(ctx, net)[0]
    x = preprocess(img, img.shape[:2])[None]
    emb = compute_embeddings([x], net, ctx, batch_size=1, fast=False)
    return mnp.array(emb, dtype='float32', ctx=ctx)


def preprocess(img, image_size):
    """RGB uint8 (H, W, 3) -> float32 (3, H', W') in [0, 1], resized to ``image_size`` (H', W')."""
    img = np.asarray(img.asnumpy() if hasattr(img, 'asnumpy') else img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError('expected an RGB image of shape (H, W, 3), got %s' % (img.shape,))
    return to_network_input(resize_face(img, tuple(image_size)))


def embed_images(images, net, ctx=None, image_size=(112, 112), batch_size=64, flip=True):
    """Embed RGB uint8 images -> L2-normalised float32 (N, emb_size) numpy array.

    With ``flip`` the embedding of each image's mirror image is added before normalising, as
    the verification protocols do, so their thresholds apply.
    """
    batch = np.stack([preprocess(img, image_size) for img in images])
    views = [batch, batch[:, :, :, ::-1]] if flip else [batch]
    return compute_embeddings(views, net, as_contexts(ctx, net)[:1], batch_size, fast=False,
                              normalize=True).astype(np.float32)


def embed_files(paths, net, ctx=None, image_size=(112, 112), batch_size=64, flip=True):
    """Embed image files (aligned face crops) -> L2-normalised float32 (N, emb_size)."""
    images = [load_photo(path) for path in paths]
    return embed_images(images, net, ctx, image_size, batch_size, flip)


def cosine_similarity(a, b):
    """Row-wise cosine similarity of two (N, D) arrays (or two (D,) vectors)."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    sim = np.sum(l2_normalize(a) * l2_normalize(b), axis=1)
    return sim if len(sim) > 1 else float(sim[0])


def compare_faces(img_a, img_b, net, threshold, ctx=None, image_size=(112, 112)):
    """Whether two face images show the same person -> ``(cosine similarity, same)``.

    ``threshold`` is a cosine similarity, e.g. ``VerificationResult.cos_threshold`` from a
    verification run of the same network. Images are RGB uint8 arrays or file paths.
    """
    loaded = [load_photo(img) if isinstance(img, (str, os.PathLike)) else img
              for img in (img_a, img_b)]
    emb = embed_images(loaded, net, ctx, image_size)
    sim = float(np.dot(emb[0], emb[1]))
    return sim, sim > threshold


class FaceEmbedder:
    """An embedding network with its input size and decision threshold, ready to compare faces.

    ``threshold`` is a cosine similarity (from verification); ``embed(images or paths)`` returns
    normalised (N, D) embeddings; ``compare(a, b)`` returns ``(similarity, same)``.
    ``template``: how a face with landmarks becomes the network's input (:meth:`embed_faces`,
    :meth:`embed_crops`): 'arcface' (ArcFace's five-point template at ``image_size``) or
    'dlib-chip' (dlib's 150x150 chip, for dlib's network run without its in-graph framing).
    ``model``: what the embeddings come from (:meth:`model_record`).
    """

    def __init__(self, net, image_size=(112, 112), threshold=None, ctx=None, template='arcface',
                 model=None):
        self.net, self.image_size, self.threshold = net, tuple(image_size), threshold
        self.ctx = as_contexts(ctx, net)[0]
        self.template = template
        self.model = dict(model or {})

    @classmethod
    def load(cls, model, image_size=None, threshold=None, ctx=None, epoch=None):
        """From anything :func:`~gluon_arcface.models.resolve.load_face_model` takes (a run
        folder, a named pretrained model, an exported model, an InsightFace checkpoint, an .onnx
        file). The input size comes from the model and the threshold from its ``model.json``
        (when it holds one verification set's) unless given. Faces aligned from their landmarks
        (:meth:`embed_faces`, :meth:`embed_crops`) take ArcFace's template, which a named model
        maps onto its own framing in its graph; dlib itself (``NAME@dlib``) takes its chip."""
        from ..models.interop import read_model_info
        from ..models.resolve import load_face_model, resolve_model
        src = resolve_model(model, epoch)
        net, model_size, source = load_face_model(src, ctx)
        # dlib itself runs on its own chip; every other model takes ArcFace's template (a named
        # model maps it onto its own framing in its graph)
        template = 'dlib-chip' if src.kind == 'dlib-reference' else 'arcface'
        if threshold is None and not source.lower().endswith('.onnx'):
            thresholds = (read_model_info(source) or {}).get('cos_threshold') or {}
            if len(thresholds) == 1:
                threshold = float(next(iter(thresholds.values())))
        if threshold is None and isinstance(model, str):
            threshold = DEFAULT_THRESHOLDS.get(model)
        size = tuple(image_size or model_size)
        return cls(net, size, threshold, ctx, template, model_record(src, template, size))

    def model_record(self):
        """What a gallery records of this embedder's model (name, weights' SHA-1, framing,
        input size, embedding size); ``{}`` for a network not loaded from a file."""
        return dict(self.model)

    def embed(self, images, photos=False, detector='auto'):
        """Normalised (N, D) embeddings of aligned crops (RGB arrays or files), or with
        ``photos=True`` of ordinary photos (the face of each is detected and aligned first;
        :class:`~gluon_arcface.data.detect.NoFaceError` names a photo without one)."""
        if photos:
            return embed_photos(images, self.net, self.ctx, self.image_size, detector=detector)
        if images and isinstance(images[0], (str, os.PathLike)):
            return embed_files(images, self.net, self.ctx, self.image_size)
        return embed_images(images, self.net, self.ctx, self.image_size)

    def compare(self, a, b, threshold=None, photos=False, detector='auto'):
        """``(cosine similarity, same)`` of two faces: aligned crops (arrays or files), or
        with ``photos=True`` ordinary photos, detected and aligned first (see
        :func:`compare_photos` for the faces and crops)."""
        threshold = self.threshold if threshold is None else threshold
        if threshold is None:
            raise ValueError('no threshold: pass one, or use cos_threshold from a verification '
                             'run')
        if photos:
            result = compare_photos(a, b, self.net, threshold, self.ctx, self.image_size,
                                    detector=detector)
            return result.similarity, result.same
        return compare_faces(a, b, self.net, threshold, self.ctx, self.image_size)

    def embed_faces(self, img, faces, batch_size=64):
        """Normalised (n, D) embeddings of detected faces (:data:`~gluon_arcface.data.detect.Face`)
        of one RGB photo, each aligned to :attr:`template` first (none: (0, D))."""
        from ..data.detect import align_photo
        crops = [align_photo(img, face, self.image_size, self.template) for face in faces]
        return self._embed_aligned(crops, batch_size)

    def embed_crops(self, images, batch_size=64):
        """Normalised (n, D) embeddings of face crops made by any tool (RGB arrays or files;
        an InsightFace 112x112 crop, a portrait): each is re-aligned from its own landmarks
        (``detect.realign``; a crop where dlib finds no face gets a fixed box) to
        :attr:`template`."""
        from ..data.detect import realign
        crops = [realign(load_photo(img), self.template, self.image_size) for img in images]
        return self._embed_aligned(crops, batch_size)

    def _embed_aligned(self, crops, batch_size):
        if not crops:
            return np.zeros((0, self.model.get('emb_size') or 0), np.float32)
        return embed_images(crops, self.net, self.ctx, self.image_size, batch_size)


def landmark_model(src, ctx=None):
    """A model for faces aligned from their landmarks -> ``(net, image_size, template,
    source)``: dlib's network (named, or ``NAME@dlib``) on dlib's 150x150 chip without its
    in-graph framing ('dlib-chip'), any other model on ArcFace's template at its input size
    ('arcface'). ``src``: a :class:`~gluon_arcface.models.resolve.ModelSource`."""
    from ..models.model_zoo import get_pretrained
    from ..models.resolve import load_face_model
    from ..nn.dlib_resnet import DLIB_CHIP_SIZE
    if src.kind == 'named':
        image_size = (DLIB_CHIP_SIZE, DLIB_CHIP_SIZE)  # the chip replaces the framing
        return get_pretrained(src.spec, ctx, image_size, geometry=None), image_size, \
            'dlib-chip', src.spec
    net, image_size, source = load_face_model(src, ctx)
    return net, image_size, 'dlib-chip' if src.kind == 'dlib-reference' else 'arcface', source


def model_record(src, template, image_size):
    """What identifies a resolved model's embeddings (``FaceEmbedder.model``): its name, the
    SHA-1 of its weights file, the framing of its faces, input size and embedding size."""
    from ..data.hub import file_sha1
    return dict(name=src.spec, sha1=file_sha1(src.path), framing=template,
                image_size=list(image_size), emb_size=src.emb_size)


# ----------------------------------------------------------------------------- photos

PhotoComparison = collections.namedtuple(
    'PhotoComparison', 'similarity same threshold faces crops photos')
PhotoComparison.__doc__ = ('What :func:`compare_photos` returns: cosine ``similarity``, ``same`` '
                           '(similarity > threshold), the ``threshold``, the two detected '
                           '``faces`` (detect.Face), their aligned ``crops`` and the decoded '
                           '``photos`` (RGB).')


def load_photo(photo):
    """A photo as RGB uint8: a file path (JPEG, PNG or BMP; FaceDataError naming it when
    missing or not an image) or an array (greyscale and RGBA are converted)."""
    from ..data.detect import as_rgb
    if isinstance(photo, (str, os.PathLike)):
        try:
            with open(photo, 'rb') as f:
                return decode_image(f.read(), os.fspath(photo))
        except FileNotFoundError:
            raise FaceDataError(photo, 'image file not found') from None
        except IsADirectoryError:
            raise FaceDataError(photo, 'is a folder, not an image file') from None
    return as_rgb(photo)


def photo_faces(photos, image_size=(112, 112), detector='auto', policy='largest',
                images=None):
    """Detect and align the face of each photo (paths or arrays) -> ``(faces, crops,
    images)``: :data:`~gluon_arcface.data.detect.Face` s, RGB crops at ``image_size`` on the
    ArcFace template, and the decoded photos (``images``: already decoded ones, the paths then
    only name them). A photo without a face to keep raises
    :class:`~gluon_arcface.data.detect.NoFaceError` naming it."""
    from ..data.detect import align_photo, find_face
    faces, crops, decoded = [], [], []
    for i, photo in enumerate(photos):
        img = load_photo(photo if images is None else images[i])
        name = os.fspath(photo) if isinstance(photo, (str, os.PathLike)) else 'photo %d' % i
        face = find_face(img, detector, policy, name)
        faces.append(face)
        crops.append(align_photo(img, face, image_size))
        decoded.append(img)
    return faces, crops, decoded


def embed_photos(photos, net, ctx=None, image_size=(112, 112), batch_size=64, flip=True,
                 detector='auto'):
    """Embed ordinary photos (paths or RGB arrays): each one's face is detected, aligned to
    the ArcFace template at ``image_size`` and embedded -> L2-normalised float32 (N, D)."""
    _, crops, _ = photo_faces(photos, image_size, detector)
    return embed_images(crops, net, ctx, image_size, batch_size, flip)


def compare_photos(photo_a, photo_b, net, threshold, ctx=None, image_size=(112, 112),
                   detector='auto', images=None):
    """Whether two ordinary photos show the same person -> :data:`PhotoComparison`. Each
    photo's face is detected and aligned first; ``threshold`` is a cosine similarity.
    ``images``: the two photos already decoded (the paths then name them in messages)."""
    faces, crops, images = photo_faces([photo_a, photo_b], image_size, detector,
                                       images=images)
    emb = embed_images(crops, net, ctx, image_size)
    sim = float(np.dot(emb[0], emb[1]))
    return PhotoComparison(sim, sim > threshold, threshold, faces, crops, images)


def verify_model(model, targets, data_dir=None, ctx=None, batch_size=64, flip=True, dtype=None,
                 output=None, progress=True, baseline=False, input_range=None, align=None,
                 geometry='default'):
    """Verify a model on ``.bin`` sets as InsightFace's verification.py does -> ``{target:
    VerificationResult}``.

    ``model``: anything ``resolve.load_face_model`` takes (run folder, exported model,
    InsightFace checkpoint ``PREFIX,EPOCH``, ``.onnx``) or a loaded network. ``targets``: names
    (``<data_dir>/<name>.bin``) or paths of .bin files; images are resized to the model's input
    size. ``flip``: add the mirror image's embedding (the protocol's default). ``baseline``:
    also score the raw pixels (``<target> (raw pixels)``). ``output``: a folder for
    ``verification.json`` and ``roc.png``. ``input_range`` (1 or 255): the pixel range a model
    file takes, overriding what ``load_face_model`` decides (model.json, the graph's head,
    else InsightFace's 0-255). ``align='landmarks'``: re-align every image from its own
    landmarks (``detect.realign``, needs dlib) to the model's template first: dlib's 150x150
    chip for dlib-resnet-v1 (then run without its in-graph framing), ArcFace's otherwise.
    ``geometry``: a named model's framing of the crops (``model_zoo.get_pretrained``).
    """
    from ..data.binfile import load_bin
    from ..models.resolve import load_face_model, resolve_model
    from ..runtime.errors import ConfigError
    from ..runtime.fileio import write_json
    from .plotting import plot_roc
    from .verification import verify, verify_pixels
    prepare = None
    if align not in (None, 'landmarks'):
        raise ValueError("align must be None or 'landmarks', got %r" % (align,))
    if isinstance(model, (str, os.PathLike)):
        src = resolve_model(model, input_range=input_range)
        if align and src.kind == 'named' and geometry != 'default':
            raise ConfigError('--geometry frames fixed crops; with --align landmarks every '
                              'image is re-aligned to dlib\'s chip instead: give one of them')
        if align and src.kind in ('named', 'dlib-reference'):
            net, image_size, template, source = landmark_model(src, ctx)
        else:
            net, image_size, source = load_face_model(src, ctx, input_range=input_range,
                                                      geometry=geometry)
            template = 'arcface'
        if align:
            import functools
            from ..data.detect import realign
            prepare = functools.partial(realign, template=template, image_size=image_size)
    elif input_range is not None:
        raise ValueError('input_range applies to a model file, not to a loaded network')
    else:
        net, image_size, source = model, (112, 112), repr(model)
    results = {}
    for target in targets:
        path = target if str(target).endswith('.bin') else os.path.join(data_dir or '.',
                                                                         target + '.bin')
        name = os.path.basename(path)[:-4]
        data_list, issame = load_bin(path, image_size, prepare, progress=bool(
            progress and prepare))
        data_set = (data_list if flip else data_list[:1], issame)
        results[name] = verify(data_set, net, ctx, batch_size, dtype=dtype,
                               progress=name if progress else False)
        if baseline:
            results[name + ' (raw pixels)'] = verify_pixels(data_set)
    if output and results:
        os.makedirs(output, exist_ok=True)
        write_json(os.path.join(output, 'verification.json'), dict(
            model=str(source), image_size=list(image_size), flip=flip,
            targets={n: r.as_dict() for n, r in results.items()}))
        plot_roc(results, os.path.join(output, 'roc.png'))
    return results
