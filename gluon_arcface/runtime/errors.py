"""The package's own exception types.

Every error about a user's file names the file and, where it applies, the record (RecordIO key or
.bin image index) or line, and says what was expected.
"""

__all__ = ['GluonArcFaceError', 'FaceDataError', 'ImageDecodeError', 'UnsafePickleError',
           'DownloadError', 'ConfigError',
           'ChecksumError', 'UnsafeArchiveError', 'CheckpointError', 'TrainingDivergedError',
           'UnknownDatasetError', 'DistributedError']


class GluonArcFaceError(Exception):
    """Base class of every error raised by gluon_arcface."""


class FaceDataError(GluonArcFaceError, ValueError):
    """A data file (RecordIO, .idx, property, .bin, image folder) is missing or malformed.

    ``path`` is the file, ``record`` the record key or image index, ``line`` the 1-based line.
    """

    def __init__(self, path, message, record=None, line=None):
        self.path, self.record, self.line, self.reason = str(path), record, line, message
        where = self.path
        if record is not None:
            where += ': record %s' % (record,)
        if line is not None:
            where += ': line %d' % line
        super().__init__('%s: %s' % (where, message))

    def __reduce__(self):  # keep the fields when raised inside a DataLoader worker
        return (self.__class__, (self.path, self.reason, self.record, self.line))


class ImageDecodeError(FaceDataError):
    """An encoded image (JPEG/PNG bytes) does not decode."""


class UnsafePickleError(FaceDataError):
    """A pickle holds an object of a type the loader does not accept (it could run code)."""


class DownloadError(GluonArcFaceError, IOError):
    """A download failed or was cut short; nothing is left under the final name."""


class ChecksumError(DownloadError):
    """A downloaded file's sha1 differs from the hub's; the file has been removed."""


class UnsafeArchiveError(GluonArcFaceError):
    """An archive entry would be written outside the extraction folder (or is a link/device)."""


class ConfigError(GluonArcFaceError, ValueError):
    """Settings that do not fit together (devices, batch size, loss name, ...)."""


class CheckpointError(GluonArcFaceError):
    """A checkpoint is missing, incomplete, or does not match the network."""


class TrainingDivergedError(GluonArcFaceError, FloatingPointError):
    """The training loss became NaN or infinite."""


class UnknownDatasetError(GluonArcFaceError, KeyError):
    """The name is neither in ``DATA_HUB`` nor in ``GENERATED`` (the dataset hub)."""

    def __str__(self):  # KeyError would show the repr of the message
        return str(self.args[0]) if self.args else ''


class DistributedError(GluonArcFaceError, RuntimeError):
    """A distributed run is set up wrongly, or its workers disagree."""
