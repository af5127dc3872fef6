#!/usr/bin/env python
"""Verify a face model on .bin verification sets (lfw, cfp_fp, agedb_30, ...) with InsightFace's
10-fold protocol; prints accuracy +- std, TAR@FAR=1e-3, XNorm and thresholds per set.

--model takes a run folder of scripts/train.py, an exported model (PREFIX or
PREFIX-symbol.json), an InsightFace MXNet checkpoint (PREFIX,EPOCH, e.g. model-r100-ii/model,0)
or an .onnx file. Images are resized to the model's input size; --output keeps
verification.json and roc.png.

The pixel range the model takes is read from its model.json (this package's exports), else from
the head of its graph (InsightFace's subtract 127.5 / multiply 0.0078125 after data, also through
identity and Cast nodes; a bn_data BatchNorm on the input), else taken as RGB 0-255,
InsightFace's convention; the choice is printed. --input-range 1|255 overrides it.
"""
import argparse
import sys

from gluon_arcface import cli


def build_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', required=True,
                   help='run folder, exported model prefix, InsightFace PREFIX,EPOCH, .onnx, '
                        'or a pretrained model: dlib-resnet-v1 (dlib-resnet-v1@dlib: the same '
                        'weights run by dlib itself, for reference)')
    p.add_argument('--data-dir', default='.', help='folder of the <target>.bin files '
                                                   '(default: the current folder)')
    p.add_argument('--targets', default='lfw,cfp_fp,agedb_30',
                   help='comma-separated names in --data-dir or .bin paths '
                        '(default: lfw,cfp_fp,agedb_30)')
    p.add_argument('--batch-size', type=int, default=64, help='images per batch (default: 64)')
    p.add_argument('--ctx', help='devices: cpu, cpu:0,cpu:1 or gpu:0 (default: all GPUs, else '
                                 'the CPU)')
    p.add_argument('--no-flip', dest='flip', action='store_false',
                   help='do not add the mirror image\'s embedding (the protocol adds it)')
    p.add_argument('--dtype', choices=('float32', 'bfloat16'),
                   help='compute dtype of a FaceResNet model (bfloat16: CPUs with '
                        'AVX512-BF16 or AMX; default: float32)')
    p.add_argument('--baseline', action='store_true',
                   help='also score the raw pixels of each set (what a model must beat)')
    p.add_argument('--input-range', type=int, choices=(1, 255),
                   help='pixel range the model takes: 255 (RGB 0-255, InsightFace\'s) or 1 '
                        '(RGB in [0, 1], this package\'s); default: read from model.json or '
                        'the graph, else 255')
    p.add_argument('--align', choices=('landmarks',),
                   help='re-align every image from its own landmarks (dlib, needs the '
                        'pretrained extra) to the model\'s template: dlib\'s 150x150 chip for '
                        'dlib-resnet-v1, ArcFace\'s otherwise (default: images as they are)')
    p.add_argument('--geometry', choices=('dlib-chip', 'resize', 'none'),
                   help='how dlib-resnet-v1 frames a 112x112 crop: dlib-chip (ArcFace\'s '
                        'landmark template mapped onto dlib\'s chip; for aligned crops), '
                        'resize (stretched to 150x150) or none (run at 112x112) (default: '
                        'dlib-chip)')
    p.add_argument('--output', help='folder for verification.json and roc.png')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    cli.add_threads_argument(p)
    return p


def main(argv=None):
    args = cli.parse_args(build_parser, argv)

    def run():
        from gluon_arcface.runtime.devices import as_contexts
        from gluon_arcface.eval.inference import verify_model
        from gluon_arcface.eval.verification import format_table
        cli.get_logger()  # shows the pixel range chosen for the model, and why
        targets = [t for t in args.targets.split(',') if t.strip()]
        results = verify_model(args.model, targets, args.data_dir, as_contexts(args.ctx),
                               args.batch_size, args.flip, args.dtype, args.output,
                               progress=not args.no_progress, baseline=args.baseline,
                               input_range=args.input_range, align=args.align,
                               geometry={None: 'default', 'none': None}.get(
                                   args.geometry, args.geometry))
        print(format_table(results, style='text'))
        if args.output:
            print('wrote %s/verification.json and %s/roc.png' % (args.output, args.output))
    return cli.main_guard(run)


if __name__ == '__main__':
    sys.exit(main())
