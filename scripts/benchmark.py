#!/usr/bin/env python
"""Images/s of the FaceResNet training step, of verification inference and of the data loader,
and the peak memory of a training step.

Training: the plain blocks imperative and hybridized, the package's default training path
(what train_ch_facerec does with a TrainBlock) and the same with --amp (bfloat16); inference:
the plain imperative forward, the hybridized blocks and the fast path
(gluon_arcface.nn.model.inference_net), in float32 and bfloat16; the loader: load_data_face_rec on
a RecordIO set of JPEGs (generated unless --data-dir is given), with the chapter's flip and with
the standard augmentation. When PyTorch is installed, the same network is timed there too (NCHW,
channels_last, and channels_last under bfloat16 autocast), in the same process with the timing
windows interleaved, so that load from other processes affects all alike. Both frameworks use
the package's thread policy unless --threads says otherwise. Prints a markdown table with the
medians over the rounds and the ratios.

--gallery 10000,100000,1000000 instead times 1:N search in galleries of that many faces
(gluon_arcface.eval.gallery_bench): ms per probe, one at a time and batched, bytes per face,
beside faiss's exact IndexFlatIP (pip install faiss-cpu) and the memory-bandwidth bound.
"""
import argparse
import shlex
import sys

from gluon_arcface import cli


def build_parser():
    from gluon_arcface import benchmark  # after --threads: it loads MXNet
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--num-layers', type=int, default=18, choices=[18, 34, 50, 100],
                   help='FaceResNet depth (default: 18)')
    p.add_argument('--batch-size', type=int, default=32,
                   help='training batch size (default: 32)')
    p.add_argument('--infer-batch-size', type=int, default=64,
                   help='inference batch size (default: 64)')
    p.add_argument('--image-size', type=int, default=112,
                   help='square input side, a multiple of 16 (default: 112)')
    p.add_argument('--num-classes', type=int, default=300,
                   help='identities of the ArcFace head (default: 300)')
    p.add_argument('--emb-size', type=int, default=256, help='embedding size (default: 256)')
    p.add_argument('--rounds', type=int, default=5,
                   help='interleaved timing rounds, medians over them (default: 5)')
    p.add_argument('--window', type=int, default=2, help='steps per case and round (default: 2)')
    for part, cases in (('train', benchmark.TRAIN_CASES), ('infer', benchmark.INFER_CASES),
                        ('memory', benchmark.MEMORY_CASES)):
        p.add_argument('--%s-cases' % part, default=','.join(cases), metavar='A,B',
                       help='comma-separated %s cases, "" for none (default: %s)'
                            % (part, ','.join(cases)))
    p.add_argument('--no-loader', action='store_true', help='skip the data loader')
    p.add_argument('--loader-images', type=int, default=2048,
                   help='images of the generated RecordIO set (default: 2048)')
    p.add_argument('--loader-workers', type=int,
                   help='loader decoding threads (default: as training sizes them)')
    p.add_argument('--data-dir', help='time the loader on this dataset folder instead')
    p.add_argument('--index-records', type=int, default=0, metavar='N',
                   help='also time opening a RecordIO index of N records, e.g. 5800000 as '
                        'MS1M (default: 0, skip)')
    cli.add_threads_argument(p)  # both frameworks: MXNet's OpenMP and torch.set_num_threads
    p.add_argument('--json', help='also write the raw measurements to this file')
    p.add_argument('--gallery', metavar='N,N', help='only time gallery search at these sizes, '
                   'e.g. 10000,100000,1000000')
    return p


def parse_args(argv=None):
    parser = {}

    def build():
        parser['p'] = build_parser()
        return parser['p']
    args = cli.parse_args(build, argv)  # --threads first, then the parser (and MXNet)
    from gluon_arcface import benchmark
    p = parser['p']
    if args.image_size % 16:
        p.error('--image-size must be a multiple of 16 (four stride-2 stages)')
    for part, known in (('train', benchmark.TRAIN_CASES), ('infer', benchmark.INFER_CASES),
                        ('memory', benchmark.MEMORY_CASES)):
        name = part + '_cases'
        cases = [c for c in getattr(args, name).split(',') if c]
        unknown = sorted(set(cases) - set(known))
        if unknown:
            p.error('unknown %s case(s) %s; choose from %s'
                    % (part, ', '.join(unknown), ', '.join(known)))
        setattr(args, name, tuple(cases))
    return args


def main(argv=None):
    args = parse_args(argv)  # applies --threads before MXNet loads
    from gluon_arcface import benchmark

    def run():
        if args.gallery:
            from gluon_arcface.eval import gallery_bench
            sizes = [int(n) for n in args.gallery.split(',') if n]
            result = gallery_bench.run_gallery_benchmark(
                sizes, rounds=args.rounds, log=lambda msg: print(msg, file=sys.stderr,
                                                                 flush=True))
            print(gallery_bench.format_gallery_report(result))
            if args.json:
                from gluon_arcface.runtime.fileio import write_json
                write_json(args.json, result)
            return
        result = benchmark.run_benchmark(
            num_layers=args.num_layers, batch_size=args.batch_size, image_size=args.image_size,
            num_classes=args.num_classes, emb_size=args.emb_size,
            infer_batch_size=args.infer_batch_size, rounds=args.rounds, window=args.window,
            train_cases=args.train_cases, infer_cases=args.infer_cases,
            memory_cases=args.memory_cases, loader=not args.no_loader,
            loader_images=args.loader_images, loader_workers=args.loader_workers,
            data_dir=args.data_dir, threads=args.threads,
            log=lambda msg: print(msg, file=sys.stderr, flush=True),
            index_records=args.index_records or None)
        given = sys.argv[1:] if argv is None else argv
        result['command'] = ' '.join(['python scripts/benchmark.py']
                                     + [shlex.quote(a) for a in given])
        print(benchmark.format_report(result))
        if args.json:
            from gluon_arcface.runtime.fileio import write_json
            write_json(args.json, result)
    return cli.main_guard(run)


if __name__ == '__main__':
    sys.exit(main())
