#!/usr/bin/env python
"""The identification figures of docs/identification.md: each model (and raw pixels) on each
1:N check folder (known/, probes/, truth.json, as gaf.write_identification_check writes them),
with every scoring of a person's faces and every threshold rule, as a Markdown table.

    python scripts/measure_identification.py CHECK... [--model dlib-resnet-v1 ...] [--pixels]

A check is made from a dataset folder with --make DATA_DIR OUT (--variant none, degraded or
recropped; --known N people enrolled, the others strangers).
"""
import argparse
import sys

from gluon_arcface import cli


def build_parser():
    from gluon_arcface.data.id_split import VARIANTS
    p = argparse.ArgumentParser(prog='measure_identification.py', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('checks', nargs='*', metavar='CHECK')
    p.add_argument('--model', action='append',
                   help='a model to measure (repeatable; default: dlib-resnet-v1)')
    p.add_argument('--pixels', action='store_true', help='also measure raw pixels')
    p.add_argument('--photos', action='store_true',
                   help='probes and known images are ordinary photos (default: face crops)')
    p.add_argument('--make', nargs=2, metavar=('DATA_DIR', 'OUT'),
                   help='write a check from a dataset folder instead')
    p.add_argument('--variant', choices=VARIANTS, default='none')
    p.add_argument('--known', type=int, help='with --make: people enrolled (default: 2/3)')
    p.add_argument('--gallery-per-person', type=int, default=4)
    p.add_argument('--probes-per-person', type=int, default=4)
    p.add_argument('--seed', type=int, default=0)
    cli.add_threads_argument(p)
    return p


def main(argv=None):
    args = cli.parse_args(build_parser, argv)

    def run():
        import gluon_arcface as gaf
        from gluon_arcface.eval import identification as ident
        if args.make:
            print(gaf.write_identification_check(
                args.make[0], args.make[1], args.known, args.gallery_per_person,
                args.probes_per_person, variant=args.variant, seed=args.seed))
            return 0
        models = args.model or ['dlib-resnet-v1']
        print('| check | model | scoring | threshold rule | threshold | rank-1 | rank-5 | '
              'DIR@FPIR=0.01 | DIR@FPIR=0.1 | open-set acc. | known right | strangers right |')
        print('|' + ' --- |' * 4 + ' ---: |' * 8)
        for check in args.checks:
            embedders = [('raw pixels', ident.PixelEmbedder())] if args.pixels else []
            embedders += [(m, gaf.FaceEmbedder.load(m)) for m in models]
            for name, embedder in embedders:
                gallery, probes, labels = ident.embed_check(check, embedder, not args.photos)
                for r in ident.compare_rules(gallery, probes, labels, embedder.threshold):
                    dirs = r.get('dir_at_fpir') or {}
                    print('| %s | %s | %s | %s | %.4f | %.1f | %.1f | %s | %s | **%.1f** | %.1f '
                          '| %.1f |' % (
                              check, name, r['scoring'], r['rule'], r['threshold'],
                              100 * r['rank1'], 100 * r['rank5'],
                              *('%.1f' % (100 * dirs[f][0]) if f in dirs else '-'
                                for f in (0.01, 0.1)),
                              100 * r['open_set_accuracy'], 100 * r['mated_accuracy'],
                              100 * r['nonmated_accuracy']))
                    sys.stdout.flush()
    return cli.main_guard(run)


if __name__ == '__main__':
    sys.exit(main())
