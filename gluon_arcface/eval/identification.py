"""1:N identification: who of the known people is each face, or is it a stranger?

* :func:`enrol`: a :class:`~gluon_arcface.eval.gallery.FaceGallery` from a folder of person
  folders (``Ann/1.jpg``), a flat folder of one photo per person (``Ann.jpg``, as
  ``face_recognition``'s command takes it), or a prepared dataset (names from
  ``identities.tsv``); ordinary photos are detected and aligned, face crops re-aligned from
  their landmarks (``crops=True``).
* :func:`calibrate_threshold`: the open-set threshold of a gallery, from its own people: each
  enrolled face is searched against the others (leave one out), which gives mated trials (the
  person's other faces are still enrolled) and non-mated ones (the person left out entirely);
  the threshold maximises the mean of the two parts' accuracies. A gallery with too few
  people of two or more faces takes the threshold that lets :data:`FALLBACK_FPIR` of its
  non-mated trials through, or the model's verification threshold where that is higher (a
  verification threshold alone lets most strangers through: a stranger is compared with
  every known person and keeps the best score).
* :func:`identify_photo`: every face of a photo (or the one face of a crop) named or
  ``unknown``, with its box and similarity; faces too small to identify are reported as such.
* :func:`evaluate_identification`: the 1:N protocol (IJB-B/C's definitions): closed-set CMC
  (rank-1, rank-5) over mated probes, DIR at FPIR 0.01 and 0.1, and open-set accuracy at a
  threshold.
"""
import collections
import json
import os

import numpy as np

from ..data.datasets import dataset_people
from ..runtime.errors import FaceDataError
from .gallery import FaceGallery

__all__ = ['UNKNOWN', 'IdentifiedFace', 'PhotoResult', 'Threshold', 'enrol',
           'scan_known', 'calibrate_threshold', 'loo_trials', 'identify_embeddings',
           'identify_photo', 'evaluate_identification', 'read_truth', 'evaluate_results',
           'threshold_at_fpir', 'PixelEmbedder', 'read_check', 'embed_check', 'compare_rules',
           'list_photos', 'results_as_json', 'describe_threshold', 'MIN_CALIBRATION',
           'FALLBACK_FPIR', 'DEFAULT_SCORING']

UNKNOWN = 'unknown'
#: A gallery is calibrated on its own faces when it has at least this many mated
#: leave-one-out trials (faces of people with two or more) across at least 3 people.
MIN_CALIBRATION = 8
#: Without such trials: the threshold lets this fraction of the gallery's non-mated trials
#: through, or is the model's verification threshold where that is higher.
FALLBACK_FPIR = 0.1
#: How a person's faces make their score (gallery.SCORINGS); measured in docs/identification.md.
DEFAULT_SCORING = 'centroid'
#: At most this many enrolled faces are left out in turn when calibrating (seeded sample).
CALIBRATION_PROBES = 2000

IdentifiedFace = collections.namedtuple('IdentifiedFace', 'box name similarity candidates status')
IdentifiedFace.__doc__ = ('One face of a photo: ``box`` (x0, y0, x1, y1) pixels, ``name`` (a '
                          'known person or ``unknown``), ``similarity`` (cosine with the best '
                          'person; None when too small), ``candidates`` [(name, similarity)] '
                          'best first, ``status`` (\'identified\', \'unknown\', \'too small\').')
PhotoResult = collections.namedtuple('PhotoResult', 'photo faces error embeddings')
PhotoResult.__doc__ = ('What :func:`identify_photo` gives for one photo: its ``photo`` name, '
                       'its ``faces`` (IdentifiedFace list, largest first, too small ones '
                       'last), ``error`` (why it could not be read, else None) and the '
                       '``embeddings`` (n, D) of the faces identified (too small ones have '
                       'none).')
Threshold = collections.namedtuple('Threshold', 'value rule details')
Threshold.__doc__ = ('An open-set threshold (cosine similarity): ``value``, the ``rule`` that '
                     'chose it (\'calibrated\', \'model\', \'fpir\', \'given\') and a '
                     '``details`` dict (trials, accuracies, FPIR).')


# ----------------------------------------------------------------------------- enrolment

def _image_files(folder):
    from ..data.prepare import _is_image
    return sorted(f for f in os.listdir(folder)
                  if _is_image(f) and os.path.isfile(os.path.join(folder, f)))


def scan_known(known):
    """The known people of a folder -> ``[(name, [image paths])]``: person folders (name = the
    folder's) and loose images (name = the file name without extension; one person each)."""
    known = os.fspath(known)
    if not os.path.isdir(known):
        raise FaceDataError(known, 'known people: expected a folder of person folders '
                            '(Ann/1.jpg), of one photo per person (Ann.jpg), or a gallery file')
    people = collections.OrderedDict()
    for name in sorted(os.listdir(known)):
        path = os.path.join(known, name)
        if name.startswith('.'):
            continue
        if os.path.isdir(path):
            files = [os.path.join(path, f) for f in _image_files(path)]
            if files:
                people.setdefault(name, []).extend(files)
    for f in _image_files(known):
        people.setdefault(os.path.splitext(f)[0], []).append(os.path.join(known, f))
    if not people:
        raise FaceDataError(known, 'no photos of known people found: expected person folders '
                            '(Ann/1.jpg) or one photo per person (Ann.jpg)')
    return list(people.items())


def enrol(known, embedder, crops=False, detector='auto', gallery=None, progress=None):
    """Enrol the known people of ``known`` (see :func:`scan_known`, or a prepared dataset
    folder holding ``property``) with ``embedder`` (a FaceEmbedder) -> ``(gallery,
    skipped)``. Photos give their face (``detect.find_face``: the largest, unless another of
    similar size); ``crops=True`` takes each image as one face crop. ``skipped``: ``[(path,
    reason)]`` of images that gave no face or could not be read. ``progress(done, total)``
    is called after each image."""
    from ..data.detect import find_face
    from .inference import load_photo
    gallery = gallery if gallery is not None else FaceGallery(embedder.model_record())
    is_dataset = os.path.isfile(os.path.join(os.fspath(known), 'property'))
    people = dataset_people(known) if is_dataset else [
        (name, [(p, p) for p in paths]) for name, paths in scan_known(known)]
    total, done, skipped = sum(len(items) for _, items in people), 0, []
    for name, items in people:
        embs, sources = [], []
        for source, item in items:
            try:
                img = load_photo(item)
                if crops or is_dataset:
                    emb = embedder.embed_crops([img])
                else:
                    emb = embedder.embed_faces(img, [find_face(img, detector, path=source)])
                embs.append(emb[0])
                sources.append(source)
            except FaceDataError as e:
                skipped.append((source, e.reason))
            done += 1
            if progress:
                progress(done, total)
        if embs:
            gallery.add(name, np.stack(embs), sources)
    if not len(gallery):
        raise FaceDataError(known, 'no known face could be enrolled (%d images skipped, the '
                            'first: %s)' % (len(skipped), skipped[0] if skipped else 'none'))
    return gallery, skipped


# ----------------------------------------------------------------------------- threshold

def loo_trials(gallery, scoring='max', max_probes=CALIBRATION_PROBES, seed=0):
    """Leave-one-out trials of a gallery's own faces -> dict of arrays over the faces left out:
    ``owner`` (person index), ``mated`` (the person has other faces enrolled), ``correct``
    (rank 1 among the people is the owner), ``genuine`` (the owner's score without this face;
    -inf when not mated), ``impostor`` (the best score of another person)."""
    emb, owner = gallery.embeddings, gallery.owner
    counts, starts = gallery.counts(), gallery.person_starts()
    rows = np.arange(len(owner))
    if len(rows) > max_probes:
        rows = np.sort(np.random.RandomState(seed).choice(rows, max_probes, replace=False))
    probes = emb[rows]
    person = gallery.person_scores(probes, scoring).astype(np.float64)  # with the face itself
    sums = gallery.templates('mean').astype(np.float64) * counts[:, None] \
        if scoring != 'max' else None
    for i, r in enumerate(rows):  # the face's own person scored without it
        p = owner[r]
        if counts[p] == 1:
            person[i, p] = -np.inf
        elif scoring == 'max':
            s = emb[starts[p]:starts[p] + counts[p]] @ probes[i]
            s[r - starts[p]] = -np.inf
            person[i, p] = s.max()
        else:
            rest = (sums[p] - probes[i]) / (counts[p] - 1)
            if scoring == 'centroid':
                rest /= max(np.linalg.norm(rest), 1e-12)
            person[i, p] = float(probes[i] @ rest)
    mine = owner[rows]
    genuine = person[np.arange(len(rows)), mine].copy()
    others = person.copy()
    others[np.arange(len(rows)), mine] = -np.inf
    impostor = others.max(axis=1) if person.shape[1] > 1 else np.full(len(rows), -np.inf)
    mated = counts[mine] > 1
    correct = mated & (genuine > impostor)
    return dict(owner=mine, mated=mated, correct=correct, genuine=genuine, impostor=impostor)


def _best_balanced(genuine, correct, impostor):
    """The threshold maximising (mated accuracy + non-mated accuracy) / 2 -> (t, accuracy,
    mated accuracy, non-mated accuracy); the middle of the best range of thresholds."""
    values = np.unique(np.concatenate([genuine[correct], impostor]))
    cuts = np.concatenate([[values[0] - 1e-3], (values[:-1] + values[1:]) / 2,
                           [values[-1] + 1e-3]])
    g = np.sort(genuine[correct])
    imp = np.sort(impostor)
    mated_acc = (len(g) - np.searchsorted(g, cuts, side='left')) / max(1, len(genuine))
    non_acc = np.searchsorted(imp, cuts, side='left') / max(1, len(imp))
    bal = (mated_acc + non_acc) / 2
    best = np.flatnonzero(bal >= bal.max() - 1e-12)
    i = best[len(best) // 2]
    return float(cuts[i]), float(bal[i]), float(mated_acc[i]), float(non_acc[i])


def calibrate_threshold(gallery, scoring=DEFAULT_SCORING, model_threshold=None):
    """The open-set threshold of a gallery (module notes) -> :data:`Threshold`.
    ``model_threshold``: the model's verification threshold (cosine), used when the gallery
    cannot calibrate itself."""
    if len(gallery) < 2:
        if model_threshold is not None:
            return Threshold(float(model_threshold), 'model', dict(people=len(gallery)))
        raise ValueError('a gallery of one person cannot calibrate a threshold and the model '
                         'has none: give one (--threshold)')
    trials = loo_trials(gallery, scoring)
    mated = trials['mated']
    people = len(np.unique(trials['owner'][mated]))
    if mated.sum() >= MIN_CALIBRATION and people >= 3:
        genuine, correct = trials['genuine'][mated], trials['correct'][mated]
        t, bal, acc_m, acc_n = _best_balanced(genuine, correct, trials['impostor'])
        fpir = float(np.mean(trials['impostor'] >= t))
        return Threshold(t, 'calibrated', dict(
            mated_trials=int(mated.sum()), nonmated_trials=int(len(mated)), people=len(gallery),
            balanced_accuracy=bal, mated_accuracy=acc_m, nonmated_accuracy=acc_n, fpir=fpir))
    fallback = threshold_at_fpir(gallery, FALLBACK_FPIR, scoring, trials)
    if model_threshold is not None and model_threshold > fallback.value:
        return Threshold(float(model_threshold), 'model', dict(
            mated_trials=int(mated.sum()), people=len(gallery), fpir_threshold=fallback.value))
    return fallback


def threshold_at_fpir(gallery, fpir, scoring=DEFAULT_SCORING, trials=None):
    """The threshold that lets ``fpir`` of the gallery's non-mated leave-one-out trials (each
    person left out, searched against the others) through -> :data:`Threshold` rule 'fpir'."""
    trials = trials or loo_trials(gallery, scoring)
    impostor = np.sort(trials['impostor'])[::-1]
    n_pass = int(np.floor(fpir * len(impostor)))
    t = impostor[n_pass] + 1e-6 if n_pass < len(impostor) else impostor[-1] - 1e-6
    return Threshold(float(t), 'fpir', dict(fpir=fpir, nonmated_trials=len(impostor),
                                            people=len(gallery)))


# ----------------------------------------------------------------------------- identifying

def identify_embeddings(gallery, embeddings, threshold, scoring=DEFAULT_SCORING, top_k=1):
    """Name each probe embedding -> list of ``(name or UNKNOWN, similarity, [(name,
    similarity)] top_k best first)``: the best person when their score >= ``threshold``."""
    if not len(embeddings):
        return []
    idx, scores = gallery.search(embeddings, max(1, top_k), scoring)
    out = []
    for i, s in zip(idx, scores):
        cands = [(gallery.names[j], float(v)) for j, v in zip(i, s)]
        out.append((cands[0][0] if cands[0][1] >= threshold else UNKNOWN, cands[0][1], cands))
    return out


def identify_photo(photo, embedder, gallery, threshold, crops=False, detector='auto',
                   min_size=None, scoring=DEFAULT_SCORING, top_k=1, image=None):
    """Every face of ``photo`` (a path or RGB array; ``image``: it already decoded) named
    against ``gallery`` -> :data:`PhotoResult`. ``crops=True``: the image is one face crop
    (box = the whole image). An unreadable photo gives ``error`` and no faces."""
    from ..data.detect import MIN_FACE_SIZE, find_faces
    from .inference import load_photo
    name = os.fspath(photo) if isinstance(photo, (str, os.PathLike)) else '<image>'
    try:
        img = load_photo(photo if image is None else image)
    except FaceDataError as e:
        return PhotoResult(name, [], e.reason, np.zeros((0, gallery.emb_size), np.float32))
    if crops:
        faces, small = None, []
        boxes = [(0, 0, img.shape[1], img.shape[0])]
        emb = embedder.embed_crops([img])
    else:
        faces, small = find_faces(img, detector, MIN_FACE_SIZE if min_size is None else min_size)
        boxes = [f.box for f in faces]
        emb = embedder.embed_faces(img, faces)
    found = [IdentifiedFace(tuple(float(v) for v in box), n, s, c,
                            'unknown' if n == UNKNOWN else 'identified')
             for box, (n, s, c) in zip(boxes, identify_embeddings(gallery, emb, threshold,
                                                                  scoring, top_k))]
    found += [IdentifiedFace(tuple(float(v) for v in f.box), UNKNOWN, None, [], 'too small')
              for f in small]
    return PhotoResult(name, found, None, emb)


# ----------------------------------------------------------------------------- protocol

def evaluate_identification(gallery, probes, labels, threshold=None, scoring=DEFAULT_SCORING,
                            fpirs=(0.01, 0.1), max_rank=20):
    """The 1:N protocol on probe embeddings (N, D) with their true ``labels`` (a person's name;
    a name not in the gallery, None or ``unknown`` marks a non-mated probe) -> dict:
    ``mated`` / ``nonmated`` counts, ``cmc`` (identification rate at ranks 1..max_rank over
    mated probes), ``rank1``, ``rank5``, ``dir_at_fpir`` {fpir: (DIR, threshold)} (IJB-C: the
    threshold lets that fraction of non-mated probes' best scores through; DIR = mated
    probes right at rank 1 with score >= it), and with ``threshold`` ``open_set_accuracy``
    (a probe is right with its person's name, or unknown for a stranger) and its two parts."""
    labels = [None if (lab is None or lab == UNKNOWN or lab not in gallery) else lab
              for lab in labels]
    scores = gallery.person_scores(probes, scoring).astype(np.float64)
    if len(labels) != len(scores):
        raise ValueError('%d labels for %d probes' % (len(labels), len(scores)))
    mated = np.array([lab is not None for lab in labels], bool)
    best = scores.max(axis=1)
    top = scores.argmax(axis=1)
    result = dict(mated=int(mated.sum()), nonmated=int((~mated).sum()), scoring=scoring)
    if mated.any():
        true = np.array([gallery.names.index(lab) for lab in np.array(labels, object)[mated]])
        s_true = scores[mated][np.arange(mated.sum()), true]
        ranks = 1 + np.sum(scores[mated] > s_true[:, None], axis=1)
        k = min(max_rank, len(gallery))
        result['cmc'] = [float(np.mean(ranks <= r)) for r in range(1, k + 1)]
        result['rank1'] = result['cmc'][0]
        result['rank5'] = result['cmc'][min(5, k) - 1]
        hit = top[mated] == true
    if (~mated).any() and mated.any():
        non = np.sort(best[~mated])[::-1]
        result['dir_at_fpir'] = {}
        for f in fpirs:
            n_pass = int(np.floor(f * len(non)))  # non-mated probes allowed at or above t
            t = non[n_pass] + 1e-9 if n_pass < len(non) else -np.inf
            result['dir_at_fpir'][f] = (float(np.mean(hit & (best[mated] >= t))), float(t))
    if threshold is not None:
        right = np.zeros(len(labels), bool)
        if mated.any():
            right[mated] = hit & (best[mated] >= threshold)
        right[~mated] = best[~mated] < threshold
        result.update(threshold=float(threshold), open_set_accuracy=float(right.mean()),
                      mated_accuracy=float(right[mated].mean()) if mated.any() else None,
                      nonmated_accuracy=float(right[~mated].mean()) if (~mated).any() else None)
    return result


def read_truth(path):
    """A truth file: JSON ``{probe file name: person or "unknown"}`` -> dict (FaceDataError
    naming the file when it is not such an object)."""
    try:
        with open(path, encoding='utf-8') as f:
            truth = json.load(f)
    except ValueError as e:
        raise FaceDataError(path, 'not JSON: %s' % e) from None
    if not isinstance(truth, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in truth.items()):
        raise FaceDataError(path, 'expected a JSON object {"probe file name": "person or '
                            'unknown", ...}')
    return truth


def evaluate_results(results, truth, gallery, threshold, scoring=DEFAULT_SCORING):
    """The protocol on a run of :func:`identify_photo` -> ``(metrics, missing)``. ``truth``:
    ``{probe file name or path: person or unknown}``; each probe is its photo's largest face
    (a crop's only face); a probe where no face was found answers ``unknown``. ``metrics``
    is :func:`evaluate_identification`'s dict with ``open_set_accuracy`` over every probe in
    ``truth`` that was run; ``missing``: the photos run that ``truth`` does not name."""
    labels, embs, faceless, missing = [], [], [], []
    for r in results:
        label = truth.get(r.photo, truth.get(os.path.basename(r.photo)))
        if label is None:
            missing.append(r.photo)
        elif len(r.embeddings):
            labels.append(label)
            embs.append(r.embeddings[0])
        else:
            faceless.append(label)
    if not labels:
        raise ValueError('no probe with a face is named in the truth file')
    metrics = evaluate_identification(gallery, np.stack(embs), labels, threshold, scoring)
    if faceless:  # no face: the answer is unknown, right only for a stranger
        n = len(labels)
        right_faceless = sum(1 for lab in faceless if lab == UNKNOWN or lab not in gallery)
        metrics['open_set_accuracy'] = (metrics['open_set_accuracy'] * n + right_faceless) / (
            n + len(faceless))
        metrics['no_face'] = len(faceless)
    metrics['probes'] = len(labels) + len(faceless)
    return metrics, missing


def list_photos(paths):
    """Photo files from files and folders (a folder: its images, sorted, recursively) -> list
    of paths; a path that does not exist is kept (identifying it reports it)."""
    from ..data.prepare import _is_image
    out = []
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
                out.extend(os.path.join(root, f) for f in sorted(files) if _is_image(f))
        else:
            out.append(path)
    return out


def results_as_json(results):
    """Results of :func:`identify_photo` as JSON-able dicts: ``{"photo", "faces": [{"box",
    "name", "similarity", "status", "candidates"}], "error"?}``, one per photo."""
    out = []
    for r in results:
        entry = dict(photo=r.photo, faces=[dict(
            box=[round(v, 1) for v in f.box], name=f.name,
            similarity=None if f.similarity is None else round(f.similarity, 4), status=f.status,
            candidates=[[n, round(s, 4)] for n, s in f.candidates]) for f in r.faces])
        if r.error:
            entry['error'] = r.error
        out.append(entry)
    return out


def describe_threshold(threshold):
    """One line saying what a :data:`Threshold` is and where it came from."""
    d = threshold.details
    if threshold.rule == 'calibrated':
        how = ('calibrated on the gallery: %d mated and %d non-mated leave-one-out trials of %d '
               'people, mean accuracy %.3f, FPIR %.3f' % (
                   d['mated_trials'], d['nonmated_trials'], d['people'],
                   d['balanced_accuracy'], d['fpir']))
    elif threshold.rule == 'model':
        how = "the model's verification threshold (too few people with two or more faces " \
              'to calibrate on the gallery; above the one at FPIR %g of its trials, %.4f)' % (
                  FALLBACK_FPIR, d['fpir_threshold'])
    elif threshold.rule == 'fpir':
        how = 'lets %.0f %% of %d non-mated trials of the gallery through (too few people ' \
              'with two or more faces to calibrate)' % (100 * d['fpir'], d['nonmated_trials'])
    else:
        how = 'given'
    return 'threshold %.4f (cosine; %s)' % (threshold.value, how)


class PixelEmbedder:
    """Raw pixels as an embedder (the baseline a model must beat): a face becomes its crop at
    ``image_size`` aligned to ArcFace's template (or the crop as it is, resized), flattened
    and summed with its mirror image; same methods as FaceEmbedder's for identification."""

    def __init__(self, image_size=(112, 112)):
        self.image_size, self.template, self.threshold = tuple(image_size), 'arcface', None
        self.model = dict(name='raw pixels', framing='arcface', image_size=list(image_size),
                          emb_size=3 * image_size[0] * image_size[1])

    def model_record(self):
        return dict(self.model)

    def _vectors(self, crops):
        from ..data.images import resize_face
        out = [resize_face(c, self.image_size).astype(np.float32) for c in crops]
        out = [(c + c[:, ::-1]).reshape(-1) for c in out]
        return np.stack(out) if out else np.zeros((0, self.model['emb_size']), np.float32)

    def embed_faces(self, img, faces, batch_size=64):
        from ..data.detect import align_photo
        return self._vectors([align_photo(img, f, self.image_size) for f in faces])

    def embed_crops(self, images, batch_size=64):
        from .inference import load_photo
        return self._vectors([load_photo(img) for img in images])


def read_check(check_dir):
    """An identification check folder (``known/``, ``probes/``, ``truth.json``; see
    :func:`~gluon_arcface.data.id_split.write_identification_check`) -> ``(known folder,
    [probe paths], [true names])``."""
    truth = read_truth(os.path.join(check_dir, 'truth.json'))
    names = sorted(truth)
    return (os.path.join(check_dir, 'known'), [os.path.join(check_dir, 'probes', n)
                                              for n in names], [truth[n] for n in names])


def embed_check(check_dir, embedder, crops=True, progress=None):
    """A check's gallery and probe embeddings with ``embedder`` -> ``(gallery, probes (N, D),
    labels)``; probes are crops (``crops=True``) or photos (their largest face; none found:
    a zero row, which scores 0 against everyone)."""
    from ..data.detect import find_faces
    from .inference import load_photo
    known, paths, labels = read_check(check_dir)
    gallery, _ = enrol(known, embedder, crops=crops, progress=progress)
    rows = []
    for path in paths:
        if crops:
            rows.append(embedder.embed_crops([path])[0])
            continue
        img = load_photo(path)
        faces, _ = find_faces(img)
        rows.append(embedder.embed_faces(img, faces[:1])[0] if faces
                    else np.zeros(gallery.emb_size, np.float32))
    return gallery, np.stack(rows), labels


def compare_rules(gallery, probes, labels, model_threshold=None, scorings=None,
                  fpirs=(0.01, 0.1)):
    """Each scoring x threshold rule on one check -> list of dicts (``scoring``, ``rule``,
    ``threshold`` and :func:`evaluate_identification`'s figures): the calibrated threshold,
    the gallery's FPIR thresholds, the model's (when given), and, for reference only, the
    best threshold on the probes themselves (``rule='oracle'``: optimistic)."""
    from .gallery import SCORINGS
    rows = []
    for scoring in scorings or SCORINGS:
        rules = [('calibrated', calibrate_threshold(gallery, scoring, None).value)]
        rules += [('fpir %g' % f, threshold_at_fpir(gallery, f, scoring).value) for f in fpirs]
        if model_threshold is not None:
            rules.append(('model', float(model_threshold)))
        base = evaluate_identification(gallery, probes, labels, None, scoring)
        scores = gallery.person_scores(probes, scoring)
        cands = np.unique(scores.max(axis=1))
        best = max(cands, key=lambda t: evaluate_identification(
            gallery, probes, labels, t, scoring)['open_set_accuracy'])
        rules.append(('oracle', float(best)))
        for rule, t in rules:
            r = evaluate_identification(gallery, probes, labels, t, scoring)
            rows.append(dict(base, **r, rule=rule))
    return rows
