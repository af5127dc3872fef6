"""What every script shares: the thread option, logging, and the error guard.

* :func:`add_threads_argument` / :func:`parse_args`: ``--threads`` reaches the thread policy
  before MXNet loads (this module does not import MXNet).
* :func:`get_logger` / :func:`log_to_file`: the package's ``logging`` logger, on the console
  and, for a run folder, in ``train.log``.
* :func:`main_guard`: a script's errors as one line ``error: ...`` and exit status 1 (the
  traceback of an unexpected error goes to the log file, or to a file it names); Ctrl-C exits
  with 130.
"""
import argparse
import logging
import os
import sys
import tempfile
import traceback

from . import threads
from .errors import GluonArcFaceError

__all__ = ['LOGGER_NAME', 'add_threads_argument', 'parse_args', 'get_logger', 'log_to_file',
           'main_guard']

LOGGER_NAME = 'gluon_arcface'


def add_threads_argument(parser):
    """Add ``--threads N`` (CPU compute threads) to an argparse parser."""
    parser.add_argument('--threads', type=int, metavar='N', help='%s (default: %s)' % (
        threads.THREADS_HELP, threads.THREADS_DEFAULT))


def parse_args(build_parser, argv=None):
    """Parse a script's arguments, applying ``--threads`` before MXNet loads.

    ``build_parser()`` returns the script's parser (with :func:`add_threads_argument`); it is
    called after the thread count is set, so it may import modules that load MXNet.
    """
    early = argparse.ArgumentParser(add_help=False)
    add_threads_argument(early)
    known, _ = early.parse_known_args(argv)
    if known.threads is not None and known.threads < 1:
        early.error('--threads: expected at least 1, got %d' % known.threads)
    threads.configure_threads(known.threads)
    return build_parser().parse_args(argv)


def get_logger():
    """The package's logger: INFO lines on stdout (plain text) unless configured otherwise."""
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter('%(message)s'))
        logger.addHandler(console)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


class log_to_file:
    """Context manager: also write the package's log to ``path`` (appending, timestamped).

    ``with log_to_file(path) as log: log('...')``; the handler is removed on exit. With
    ``enabled=False`` (e.g. the other workers of a distributed run) ``log`` does nothing.
    """

    def __init__(self, path, enabled=True):
        self.path, self.enabled, self.handler = path, enabled, None

    def __enter__(self):
        logger = get_logger()
        if not self.enabled:
            return lambda *parts: None
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.handler = logging.FileHandler(self.path, encoding='utf-8')
        self.handler.setFormatter(logging.Formatter('%(asctime)s %(message)s',
                                                    '%Y-%m-%d %H:%M:%S'))
        logger.addHandler(self.handler)
        return lambda *parts: logger.info(' '.join(str(p) for p in parts))

    def __exit__(self, exc_type, exc, tb):
        if self.handler is not None:
            if exc_type is not None and not issubclass(exc_type, (GluonArcFaceError,
                                                                  KeyboardInterrupt)):
                self.handler.handle(logging.LogRecord(
                    LOGGER_NAME, logging.ERROR, __file__, 0, 'unexpected error:\n%s',
                    (''.join(traceback.format_exception(exc_type, exc, tb)),), None))
                exc.gluon_arcface_log = self.path  # where main_guard points the user
            get_logger().removeHandler(self.handler)
            self.handler.close()
        return False


def _first_line(exc):
    """The informative line of an exception's text (MXNet's errors add pages of C++ context)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if not line.startswith(('Traceback', 'File ', 'Stack trace', '[bt]')):
            return line[:300]
    return ''


def main_guard(func):
    """Run ``func()`` and return a process exit status.

    The package's errors (and the system's, e.g. a missing file) are shown as one line
    ``error: ...`` (status 1);
    any other exception too, with its traceback kept in the run's ``train.log`` or in a file
    named on that line; Ctrl-C gives status 130. Output streams are flushed before returning.
    """
    try:
        status = func()
        return 0 if status is None else int(status)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130
    except (GluonArcFaceError, OSError) as e:  # about the user's files, devices or settings
        print('error: %s' % e, file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - one line for the user, the traceback kept in a file
        where = getattr(e, 'gluon_arcface_log', None)
        if where is None:
            fd, where = tempfile.mkstemp(prefix='gluon_arcface-error-', suffix='.txt')
            with os.fdopen(fd, 'w') as f:
                traceback.print_exc(file=f)
        print('error: %s: %s (an unexpected failure; traceback in %s)'
              % (type(e).__name__, _first_line(e), where), file=sys.stderr)
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
