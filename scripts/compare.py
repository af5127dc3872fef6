#!/usr/bin/env python
"""Do two ordinary photos show the same person? Finds the face of each (dlib: HOG, then the CNN
where HOG finds none), aligns it to the ArcFace template, embeds both with the model and prints
their cosine similarity and "same person" / "different people" against the threshold.

The threshold is --threshold when given, else the model's (its model.json's cos_threshold;
for dlib-resnet-v1 the one measured in docs/own_photos.md). Exit
status 1, with one line naming the photo, when a photo has no face (or several of similar size)
or is not an image.
"""
import argparse
import sys

from gluon_arcface import cli


def build_parser():
    p = argparse.ArgumentParser(prog='compare.py', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('photo_a', metavar='A')
    p.add_argument('photo_b', metavar='B')
    p.add_argument('--model', default='dlib-resnet-v1',
                   help='run folder, exported model, InsightFace PREFIX,EPOCH, .onnx, or a '
                        'pretrained model (default: dlib-resnet-v1)')
    p.add_argument('--threshold', type=float,
                   help='cosine similarity above which the faces are the same person '
                        '(default: the model\'s)')
    p.add_argument('--detector', choices=('auto', 'hog', 'cnn'), default='auto',
                   help='face detector (default: auto, HOG then the CNN)')
    p.add_argument('--crops', metavar='PREFIX',
                   help='also write the aligned crops to PREFIX_a.png and PREFIX_b.png')
    p.add_argument('--ctx', help='device: cpu or gpu:0 (default: a GPU if any, else the CPU)')
    cli.add_threads_argument(p)
    return p


def main(argv=None):
    args = cli.parse_args(build_parser, argv)

    def run():
        import cv2
        from gluon_arcface.runtime.devices import as_contexts
        from gluon_arcface.runtime.errors import ConfigError
        from gluon_arcface.eval.inference import FaceEmbedder, compare_photos, load_photo
        # Decode the photos before loading a model: a file that is no image fails at once.
        photos = [load_photo(p) for p in (args.photo_a, args.photo_b)]
        ctx = as_contexts(args.ctx)[:1] if args.ctx else None
        embedder = FaceEmbedder.load(args.model, threshold=args.threshold, ctx=ctx)
        if embedder.threshold is None:
            raise ConfigError('%s has no threshold (no cos_threshold in its model.json): pass '
                              '--threshold' % args.model)
        result = compare_photos(args.photo_a, args.photo_b, embedder.net, embedder.threshold,
                                embedder.ctx, embedder.image_size, detector=args.detector,
                                images=photos)
        for path, face in zip((args.photo_a, args.photo_b), result.faces):
            x0, y0, x1, y1 = (int(round(v)) for v in face.box)
            print('%s: face at (%d, %d)-(%d, %d), score %.2f' % (path, x0, y0, x1, y1,
                                                                 face.score))
        if args.crops:
            for tag, crop in zip('ab', result.crops):
                out = '%s_%s.png' % (args.crops, tag)
                if not cv2.imwrite(out, cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)):
                    raise OSError('could not write %s' % out)
                print('wrote %s' % out)
        print('cosine similarity %.4f (threshold %.4f): %s' % (
            result.similarity, result.threshold,
            'same person' if result.same else 'different people'))
    return cli.main_guard(run)


if __name__ == '__main__':
    sys.exit(main())
