#!/usr/bin/env python
"""Dataset tools: turn your own face photos into the training layout, and check datasets.

  folders SRC OUT   per-person photo folders -> train.rec/.idx and/or %08d folders, property,
                    identities.tsv (and <val-name>.bin from --holdout people); with --detect
                    the face of each ordinary photo is found and aligned (skipped.tsv lists
                    the photos without one)
  pairs TXT ROOT OUT.bin
                    verification .bin from an LFW-style pairs.txt
  realign SRC OUT   a dataset made by another tool (its crops framed another way) -> a new
                    dataset with every crop and .bin image re-aligned from its own landmarks
                    to ArcFace's template, as the package aligns; realigned.tsv lists crops
                    where no face was detected (aligned from landmarks in a fixed box); SRC
                    is not changed
  index REC         rebuild REC's .idx by scanning the records (a differing old one is kept)
  check DATA_DIR    decode every image and load every .bin; exit status 1 on any problem
"""
import argparse
import sys

from gluon_arcface import cli


def _add_image_options(p):
    p.add_argument('--image-size', type=int, nargs=2, default=(112, 112),
                   metavar=('HEIGHT', 'WIDTH'), help='output size (default: 112 112)')
    p.add_argument('--landmarks', metavar='FILE',
                   help='align faces with 5 landmarks per photo: lines "relative/path x1 y1 ... '
                        'x5 y5" (left eye, right eye, nose, mouth corners); without it photos '
                        'are only resized')
    p.add_argument('--jpeg-quality', type=int, default=95, help='JPEG quality (default: 95)')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')


def build_parser():
    from gluon_arcface import prepare
    parser = argparse.ArgumentParser(prog='prepare_data.py', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_threads_argument(parser)
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True

    p = sub.add_parser('folders', help='convert per-person photo folders into a dataset',
                       description='Convert SRC (one folder per person, e.g. '
                                   'Ann_Smith/Ann_Smith_0001.jpg) into the dataset folder OUT. '
                                   'OUT must not exist or be empty; it appears only when '
                                   'complete.')
    p.add_argument('src', metavar='SRC')
    p.add_argument('out', metavar='OUT')
    _add_image_options(p)
    p.add_argument('--formats', nargs='+', choices=prepare.FORMATS, default=list(prepare.FORMATS),
                   help='what to write (default: rec folders)')
    p.add_argument('--holdout', type=int, default=0, metavar='K',
                   help='keep K people out of training and sample a verification .bin from them')
    p.add_argument('--val-name', default='val', metavar='NAME',
                   help='name of that .bin (default: val -> val.bin)')
    p.add_argument('--num-pairs', type=int, default=None, metavar='N',
                   help='pairs in the .bin, half same person (default: as many as possible, up '
                        'to %d of each kind)' % prepare.DEFAULT_MAX_PAIRS)
    p.add_argument('--min-images', type=int, default=1, metavar='M',
                   help='drop people with fewer than M usable photos (default: 1)')
    p.add_argument('--seed', type=int, default=0, help='seed of the holdout choice and pairs')
    p.add_argument('--skip-bad', action='store_true',
                   help='skip (and count) photos that do not decode or lack landmarks instead of '
                        'stopping')
    p.add_argument('--overwrite', action='store_true',
                   help='if OUT exists and is not empty, rename it to OUT.old-<id> (never '
                        'deleted) and write a new OUT')
    p.add_argument('--detect', nargs='?', const='auto', choices=('auto', 'hog', 'cnn'),
                   help='find the face of each ordinary photo (dlib, needs the pretrained '
                        'extra) and align it to the ArcFace template at --image-size: auto '
                        '(the default of --detect: HOG, then HOG upsampled once more, then the '
                        'CNN where HOG finds nothing), hog (fast) or cnn (slower, finds more). '
                        'Photos with no face to keep, or that do not decode, are skipped and '
                        'listed in OUT/skipped.tsv')
    p.add_argument('--detect-policy', choices=('largest', 'skip'), default='largest',
                   help='photos with several faces: largest keeps the largest unless another '
                        'is of similar size (box area >= half of it: skipped); skip keeps only '
                        'photos with one face (default: largest)')
    p.add_argument('--workers', type=int, metavar='N',
                   help='processes that decode, detect and encode photos (default: one per '
                        'physical core, at most 8; 1 for fewer than 64 photos)')

    p = sub.add_parser('pairs', help='verification .bin from an LFW-style pairs.txt',
                       description='First line "N" or "folds<TAB>N"; then "name<TAB>i<TAB>j" '
                                   '(same person) and "name1<TAB>i<TAB>name2<TAB>j" lines. Photo '
                                   'i of name is IMAGE_ROOT/name/name_%04d<ext>.')
    p.add_argument('pairs_txt', metavar='PAIRS_TXT')
    p.add_argument('image_root', metavar='IMAGE_ROOT')
    p.add_argument('out', metavar='OUT.bin')
    _add_image_options(p)
    p.add_argument('--ext', default='.jpg', help='photo file extension (default: .jpg)')
    p.add_argument('--overwrite', action='store_true', help='replace OUT.bin if it exists')

    p = sub.add_parser('realign', help='re-align a dataset made by another tool (needs dlib)')
    p.add_argument('src', metavar='SRC', help='dataset folder (property, train.rec or '
                   'identity folders, .bin sets)')
    p.add_argument('out', metavar='OUT', help='new dataset folder (must not exist or be empty)')
    p.add_argument('--jpeg-quality', type=int, default=95, help='JPEG quality (default: 95)')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')

    p = sub.add_parser('index', help='rebuild the .idx of a .rec by scanning it')
    p.add_argument('rec', metavar='REC')

    p = sub.add_parser('check', help='decode every image and load every .bin of a dataset',
                       description='Exit status 0 when everything reads, 1 otherwise.')
    p.add_argument('data_dir', metavar='DATA_DIR')
    p.add_argument('--max-errors', type=int, default=20, help='errors to list (default: 20)')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def main(argv=None):
    """Run one subcommand; returns the exit status."""
    args = cli.parse_args(build_parser, argv)
    return cli.main_guard(lambda: run(args))


def run(args):
    from gluon_arcface import check, prepare
    if args.command == 'folders':
        summary = prepare.prepare_dataset(
            args.src, args.out, image_size=args.image_size, formats=args.formats,
            landmarks=args.landmarks, holdout=args.holdout, val_name=args.val_name,
            num_pairs=args.num_pairs, min_images=args.min_images,
            jpeg_quality=args.jpeg_quality, seed=args.seed, skip_bad=args.skip_bad,
            overwrite=args.overwrite, progress=not args.no_progress, detect=args.detect,
            detect_policy=args.detect_policy, workers=args.workers)
        print(prepare.format_summary(summary))
    elif args.command == 'pairs':
        summary = prepare.bin_from_pairs(
            args.pairs_txt, args.image_root, args.out, image_size=args.image_size,
            landmarks=args.landmarks, ext=args.ext, jpeg_quality=args.jpeg_quality,
            overwrite=args.overwrite, progress=not args.no_progress)
        print(prepare.format_summary(summary))
    elif args.command == 'realign':
        from gluon_arcface.data.realigning import realign_dataset
        summary = realign_dataset(args.src, args.out, jpeg_quality=args.jpeg_quality,
                                  progress=not args.no_progress)
        print('%s: %d images of %d identities re-aligned to ArcFace\'s template; %s; %d crops '
              'where no face was detected, aligned from landmarks in a fixed box '
              '(realigned.tsv)' % (
                  args.out, summary['images'], summary['identities'],
                  ', '.join('%s.bin %d pairs' % kv for kv in summary['bins'].items())
                  or 'no .bin', len(summary['kept'])))
    elif args.command == 'index':
        idx_path, count, old = check.rebuild_index(args.rec)
        print('wrote %s: %d records' % (idx_path, count))
        if old:
            print('the previous index differed; kept it as %s' % old)
    else:
        report = check.check_dataset(args.data_dir, max_errors=args.max_errors,
                                       progress=not args.no_progress)
        print(check.format_check_report(report))
        return 1 if report['num_errors'] else 0
    return 0


if __name__ == '__main__':
    sys.exit(main())
