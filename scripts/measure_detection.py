#!/usr/bin/env python
"""Measure face detection and 5-point alignment on faces pasted into larger frames
(gluon_arcface.data.pasted_faces), the figures of docs/own_photos.md.

  pasted        faces (skimage's astronaut, or the crops of a .bin) pasted at known positions,
                sizes (--widths) and rotations into backgrounds: detection rate, alignment error
                (pixels at 112x112) and seconds per frame, per detector
  verification  every photo of the first --pairs pairs of a verification .bin pasted into a
                real background (skimage's photos), detected and aligned; 10-fold accuracy of
                the aligned crops beside the .bin's own crops on the same pairs, with a model
                (default dlib-resnet-v1)
"""
import argparse
import sys
import time

from gluon_arcface import cli

REAL_BACKGROUNDS = ('coffee', 'chelsea', 'rocket', 'brick', 'grass')


def build_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_threads_argument(p)
    sub = p.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True
    a = sub.add_parser('pasted', help='detection rate and alignment error on pasted faces')
    a.add_argument('--bin', help='paste the crops of this .bin (default: --faces)')
    a.add_argument('--faces', choices=('astronaut', 'portraits'), default='astronaut',
                   help='without --bin: skimage\'s astronaut, or portraits: the astronaut and '
                        'matplotlib\'s Grace Hopper in turn (default: astronaut)')
    a.add_argument('--count', type=int, default=200, help='frames (default: 200)')
    a.add_argument('--step', type=int, default=1, help='every STEP-th crop of --bin')
    a.add_argument('--seed', type=int, default=0)
    a.add_argument('--widths', type=float, nargs=2, default=(60, 250), metavar=('MIN', 'MAX'),
                   help='face width in pixels, 2.5 eye distances (default: 60 250)')
    a.add_argument('--detectors', default='hog,auto', help='comma-separated (default: hog,auto)')
    v = sub.add_parser('verification', help='verification of detected + aligned faces')
    v.add_argument('bin', metavar='BIN')
    v.add_argument('--pairs', type=int, default=1200, help='first N pairs (default: 1200)')
    v.add_argument('--model', default='dlib-resnet-v1')
    v.add_argument('--detector', default='auto', choices=('auto', 'hog', 'cnn'))
    v.add_argument('--widths', type=float, nargs=2, default=(90, 220), metavar=('MIN', 'MAX'),
                   help='face width in the frame (default: 90 220, about 1x to 2.5x the crop)')
    v.add_argument('--seed', type=int, default=0)
    return p


def run_pasted(args):
    from gluon_arcface import pasted_faces as pf
    if args.bin:
        sources = pf.bin_sources(args.bin, limit=args.count, step=args.step)
    elif args.faces == 'portraits':
        sources = pf.portrait_sources()
    else:
        sources = [pf.astronaut_source()]
    residual = sum(pf.template_residual(s.landmarks) for s in sources) / len(sources)
    frames = pf.make_frames(sources, args.count, args.seed, widths=tuple(args.widths))
    grey = sum(f.grey for f in frames)
    print('%d frames (%d greyscale) of %d source face(s); template residual of the sources '
          '%.2f px' % (len(frames), grey, len(sources), residual))
    print('| detector | found | rate (%) | mean / median / max error (px at 112) | s / frame '
          '| found by step | misses |')
    print('| --- | ---: | ---: | --- | ---: | --- | --- |')
    for det in args.detectors.split(','):
        r = pf.evaluate(frames, det)
        print('| %s | %d / %d | %.1f | %.2f / %.2f / %.2f | %.3f | %s | %s |' % (
            det, r['found'], r['frames'], 100 * r['rate'], r['mean_error'], r['median_error'],
            r['max_error'], r['seconds'], ', '.join('%s: %d' % kv for kv in r['steps']),
            ', '.join('%s: %d' % kv for kv in
                                                    sorted(r['reasons'].items())) or '-'))
        sys.stdout.flush()


def run_verification(args):
    import numpy as np
    from gluon_arcface import pasted_faces as pf
    from gluon_arcface.data.binfile import read_bin
    from gluon_arcface.data.detect import NoFaceError, align_photo, find_face
    from gluon_arcface.data.images import decode_image
    from gluon_arcface.eval.inference import FaceEmbedder
    from gluon_arcface.eval.verification import evaluate_embeddings
    bins, issame = read_bin(args.bin)
    n = min(args.pairs, len(issame))
    crops = [decode_image(b, args.bin, record=i) for i, b in enumerate(bins[:2 * n])]
    sources = pf.bin_sources(args.bin, limit=2 * n)
    frames = pf.make_frames(sources, 2 * n, args.seed, widths=tuple(args.widths), grey=0,
                            backgrounds=REAL_BACKGROUNDS)
    aligned, found, start = [], [], time.perf_counter()
    for frame in frames:
        try:
            face = find_face(frame.image, args.detector)
            x0, y0, x1, y1 = face.box
            nx, ny = frame.landmarks[2]
            ok = x0 <= nx <= x1 and y0 <= ny <= y1
        except NoFaceError:
            face, ok = None, False
        found.append(ok)
        aligned.append(align_photo(frame.image, face) if ok else None)
    seconds = (time.perf_counter() - start) / len(frames)
    found = np.array(found)
    both = found[0::2] & found[1::2]
    print('%d photos of %d pairs pasted into real backgrounds (%s), face width %g-%g px' % (
        2 * n, n, ', '.join(REAL_BACKGROUNDS), *args.widths))
    print('detector %s: found %d / %d photos (%.1f %%), %.2f s per photo; both photos found in '
          '%d / %d pairs' % (args.detector, found.sum(), 2 * n, 100 * found.mean(), seconds,
                             both.sum(), n))
    if both.sum() < 2:
        print('fewer than two pairs with both faces found: no verification')
        return
    embedder = FaceEmbedder.load(args.model)
    idx = [i for p in np.flatnonzero(both) for i in (2 * p, 2 * p + 1)]
    same = np.asarray(issame[:n])[both]
    rows = [('the .bin\'s crops, these pairs', [crops[i] for i in idx]),
            ('detected + aligned from the frames', [aligned[i] for i in idx])]
    print('| %s on %d pairs | 10-fold acc. (%%) | TAR @ FAR=1e-3 (%%) | cos threshold |'
          % (args.model, len(same)))
    print('| --- | ---: | ---: | ---: |')
    for name, images in rows:
        r = evaluate_embeddings(embedder.embed(images), same)
        print('| %s | %.2f +- %.2f | %.1f | %.3f |' % (name, 100 * r.accuracy, 100 * r.std,
                                                      100 * r.tar_at_far, r.cos_threshold))
        sys.stdout.flush()


def main(argv=None):
    args = cli.parse_args(build_parser, argv)
    return cli.main_guard(lambda: run_pasted(args) if args.command == 'pasted'
                          else run_verification(args))


if __name__ == '__main__':
    sys.exit(main())
