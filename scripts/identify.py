#!/usr/bin/env python
"""Who is in these photos? Names every face of each photo against the people you know.

--known is a folder of person folders (Ann/1.jpg, Ann/2.jpg, Bob/1.jpg), a folder of one photo
per person (Ann.jpg, Bob.jpg), a prepared dataset folder (names from identities.tsv), or a
gallery file written by --save-gallery. Each face found in a PHOTO (a file or a folder of
them) is aligned from its landmarks, embedded with --model and compared with every known
person: the best one names it when their cosine similarity reaches the threshold, else it is
"unknown". The threshold, unless --threshold gives one, is calibrated on the gallery itself
(each known face searched against the others, leave one out; the line on stderr says how).

stdout: one CSV line per face, as face_recognition's command prints them:
    photo,x0,y0,x1,y1,name,similarity
("no_persons_found" in the name column for a photo without a face; "too_small" for a face
smaller than --min-face-size). With --top-k K > 1, K-1 more name,similarity pairs follow.
--json writes the same as a list of {"photo", "faces": [{"box", "name", "similarity", ...}]}.
--truth FILE.json ({"probe file name": "person" or "unknown"}) prints the identification
protocol for the run (rank-1, rank-5, DIR at FPIR, open-set accuracy). A photo that cannot be
read is reported on stderr and the others are still identified; the exit status is then 1.
Nothing under --known or among the photos is changed.
"""
import argparse
import csv
import os
import sys

from gluon_arcface import cli


def build_parser():
    from gluon_arcface.data.detect import DETECTORS, MIN_FACE_SIZE
    from gluon_arcface.eval.gallery import SCORINGS
    from gluon_arcface.eval.identification import DEFAULT_SCORING
    p = argparse.ArgumentParser(prog='identify.py', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('photos', nargs='+', metavar='PHOTO_OR_FOLDER')
    p.add_argument('--known', required=True, metavar='DIR_OR_GALLERY',
                   help='the known people: person folders, one photo per person, a dataset '
                        'folder, or a gallery file (.npz from --save-gallery)')
    p.add_argument('--model', default='dlib-resnet-v1',
                   help='run folder, exported model, InsightFace PREFIX,EPOCH, .onnx, or a '
                        'pretrained model (default: dlib-resnet-v1)')
    p.add_argument('--crops', action='store_true',
                   help='the images (known and probes) are face crops, one face each (an '
                        'InsightFace 112x112 crop, a portrait): no detection, each re-aligned '
                        'from its landmarks')
    p.add_argument('--threshold', type=float,
                   help='cosine similarity a face needs to be named (default: calibrated on '
                        'the gallery)')
    p.add_argument('--scoring', choices=SCORINGS, default=DEFAULT_SCORING,
                   help='a person\'s score from their faces: max (nearest face), mean, or '
                        'centroid (the mean embedding) (default: %(default)s)')
    p.add_argument('--top-k', type=int, default=1, metavar='K',
                   help='candidates to print per face (default: %(default)s)')
    p.add_argument('--min-face-size', type=int, default=MIN_FACE_SIZE, metavar='PX',
                   help='faces narrower than this are reported as too small (default: '
                        '%(default)s)')
    p.add_argument('--detector', choices=DETECTORS, default='auto',
                   help='face detector (default: auto, HOG then the CNN)')
    p.add_argument('--json', metavar='OUT', help='also write the results as JSON to OUT')
    p.add_argument('--draw', metavar='DIR',
                   help='write each photo with its faces boxed and named to DIR')
    p.add_argument('--save-gallery', metavar='FILE',
                   help='write the enrolled gallery to FILE (.npz), for --known FILE later')
    p.add_argument('--truth', metavar='FILE.json',
                   help='the probes\' true names ("unknown" for strangers): print the '
                        'identification protocol of the run')
    p.add_argument('--cmc', metavar='PNG', help='with --truth: write the CMC curve to PNG')
    p.add_argument('--ctx', help='device: cpu or gpu:0 (default: a GPU if any, else the CPU)')
    cli.add_threads_argument(p)
    return p


def _print_metrics(metrics, out):
    def pct(v):
        return '-' if v is None else '%.2f' % (100 * v)
    print('probes: %d (%d of people in the gallery, %d strangers)' % (
        metrics['probes'], metrics['mated'], metrics['nonmated']
        + metrics.get('no_face', 0)), file=out)
    print('closed set: rank-1 %s %%, rank-5 %s %%' % (pct(metrics.get('rank1')),
                                                    pct(metrics.get('rank5'))), file=out)
    for fpir, (rate, t) in sorted((metrics.get('dir_at_fpir') or {}).items()):
        print('open set: DIR %s %% at FPIR %g (threshold %.4f)' % (pct(rate), fpir, t), file=out)
    print('open-set accuracy at threshold %.4f: %s %% (people in the gallery %s %%, strangers '
          '%s %%)' % (metrics['threshold'], pct(metrics['open_set_accuracy']),
                      pct(metrics['mated_accuracy']), pct(metrics['nonmated_accuracy'])),
          file=out)


def main(argv=None):
    args = cli.parse_args(build_parser, argv)

    def run():
        from tqdm.auto import tqdm
        from gluon_arcface.runtime.devices import as_contexts
        from gluon_arcface.runtime.errors import ConfigError
        from gluon_arcface.runtime.fileio import write_json
        from gluon_arcface.eval import identification as ident
        from gluon_arcface.eval.gallery import FaceGallery
        from gluon_arcface.eval.inference import FaceEmbedder
        from gluon_arcface.eval.plotting import draw_faces, plot_cmc
        if args.top_k < 1:
            raise ConfigError('--top-k: expected at least 1, got %d' % args.top_k)
        if args.cmc and not args.truth:
            raise ConfigError('--cmc needs --truth')
        truth = ident.read_truth(args.truth) if args.truth else None
        photos = ident.list_photos(args.photos)
        if not photos:
            raise ConfigError('no photos found in %s' % ', '.join(args.photos))
        ctx = as_contexts(args.ctx)[:1] if args.ctx else None
        embedder = FaceEmbedder.load(args.model, ctx=ctx)
        if os.path.isfile(args.known):
            gallery = FaceGallery.load(args.known, model=embedder.model_record())
        else:
            bar = tqdm(unit='img', desc='enrolling', file=sys.stderr, leave=False)

            def progress(done, total):
                bar.total = total
                bar.update(done - bar.n)
            gallery, skipped = ident.enrol(args.known, embedder, crops=args.crops,
                                           detector=args.detector, progress=progress)
            bar.close()
            for path, reason in skipped:
                print('skipped known %s: %s' % (path, reason), file=sys.stderr)
        print('known: %d people, %d faces (%s)' % (len(gallery), gallery.num_embeddings,
                                                   args.known), file=sys.stderr)
        if args.threshold is not None:
            threshold = ident.Threshold(args.threshold, 'given', {})
        else:
            threshold = ident.calibrate_threshold(gallery, args.scoring, embedder.threshold)
        print(ident.describe_threshold(threshold), file=sys.stderr)
        if args.save_gallery:
            gallery.save(args.save_gallery, extra=dict(
                threshold=threshold.value, threshold_rule=threshold.rule, scoring=args.scoring))
            print('wrote %s' % args.save_gallery, file=sys.stderr)
        inputs = {os.path.abspath(p) for p in photos}
        writer = csv.writer(sys.stdout, lineterminator='\n')
        results, failed, drawn = [], 0, set()
        for photo in tqdm(photos, unit='photo', desc='identifying', file=sys.stderr,
                          leave=False, disable=len(photos) < 4):
            r = ident.identify_photo(photo, embedder, gallery, threshold.value, args.crops,
                                     args.detector, args.min_face_size, args.scoring,
                                     args.top_k)
            results.append(r)
            if r.error:
                failed += 1
                print('error: %s: %s' % (photo, r.error), file=sys.stderr)
                continue
            if not r.faces:
                writer.writerow([photo, '', '', '', '', 'no_persons_found', ''])
            for f in r.faces:
                row = [photo] + [int(round(v)) for v in f.box]
                if f.status == 'too small':
                    row += ['too_small', '']
                else:
                    row += [f.name, '%.4f' % f.similarity]
                    for n, s in f.candidates[1:]:
                        row += [n, '%.4f' % s]
                writer.writerow(row)
            sys.stdout.flush()
            if args.draw:
                drawn_path = _draw_path(args.draw, photo, drawn, inputs)
                from gluon_arcface.eval.inference import load_photo
                draw_faces(load_photo(photo), [
                    (f.box, '%s %.2f' % (f.name, f.similarity) if f.similarity is not None
                     else 'too small', f.status == 'identified') for f in r.faces], drawn_path)
        if args.json:
            write_json(args.json, ident.results_as_json(results))
            print('wrote %s' % args.json, file=sys.stderr)
        if truth is not None:
            metrics, missing = ident.evaluate_results(results, truth, gallery, threshold.value,
                                                      args.scoring)
            if missing:
                print('not in %s (not scored): %d photos, e.g. %s' % (
                    args.truth, len(missing), missing[0]), file=sys.stderr)
            _print_metrics(metrics, sys.stderr)
            if args.cmc:
                plot_cmc({args.model: metrics}, args.cmc)
                print('wrote %s' % args.cmc, file=sys.stderr)
        return 1 if failed else 0
    return cli.main_guard(run)


def _draw_path(folder, photo, taken, inputs):
    """``folder/<photo's name>.jpg``, numbered when taken, never one of the inputs."""
    stem = os.path.splitext(os.path.basename(photo))[0]
    for i in range(1, 10 ** 6):
        path = os.path.join(folder, stem + ('' if i == 1 else '_%d' % i) + '.jpg')
        if path not in taken and os.path.abspath(path) not in inputs:
            taken.add(path)
            return path
    raise OSError('%s: no free file name for %s' % (folder, photo))


if __name__ == '__main__':
    sys.exit(main())
