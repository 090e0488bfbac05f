"""Every exception (and warning) class of ftlens, in one place. Every message says what was wrong
and what to do.

Errors caused by input the user can fix derive from :class:`FtlensError`; the command line prints
their message on one line and exits with status 2. Those about a value also derive from
``ValueError`` so that ``except ValueError`` keeps working.
"""

from __future__ import annotations


class FtlensError(Exception):
    """Base class: an error caused by input the user can fix."""


class ConfigError(FtlensError, ValueError):
    """An invalid option or configuration (unknown key, wrong type, value out of range, conflict)."""


class ConfigTypeError(ConfigError, TypeError):
    """An argument of the wrong type (also a ``TypeError``)."""


class UsageError(FtlensError, RuntimeError):
    """A method called in the wrong order (e.g. a result asked for before anything was computed)."""


class ResultNotFoundError(FtlensError, FileNotFoundError):
    """A result folder or file that is not there (a path that was not written by the command that makes it)."""


class OutputError(FtlensError):
    """An output folder that cannot be written, or that holds something ftlens must not overwrite."""


class LayerError(FtlensError, KeyError):
    """Unknown layer name, a glob that matched nothing, or a layer called twice."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(FtlensError):
    """A checkpoint that is unreadable or does not match the architecture."""


class ImageError(FtlensError, ValueError):
    """Images of the wrong shape, dtype or value range."""


class TextError(ImageError):
    """Text inputs (strings, tokens or word vectors) a text model cannot read."""


class DatasetError(FtlensError):
    """A dataset that is missing, needs a download while offline, or is malformed."""


class NumericalError(FtlensError, FloatingPointError):
    """NaN or inf where a finite number is needed."""


class OfflineError(FtlensError):
    """Something needs the network and the network is not there."""


class CorrelationError(FtlensError, ValueError):
    """Inputs of the correlation analysis that cannot be used as given."""


class DistortionError(FtlensError, ValueError):
    """Features or runs that cannot be compared as given."""


class DegenerateRepresentationWarning(UserWarning):
    """A similarity is undefined for the given input (e.g. a constant representation); NaN returned."""


class CacheWarning(UserWarning):
    """A cache entry was ignored (unreadable, for another key, non-finite) or could not be written."""


class ModelError(FtlensError, ValueError):
    """A model spec or module ftlens cannot load or trace (unknown name, untraceable layers,
    a LoRA adapter that does not fit its base)."""


class ImageSizeError(ModelError, ImageError):
    """An input size the architecture cannot take, or images of a size the model does not take
    (the message names the ``image_size`` argument that fixes it)."""


class MissingDependencyError(FtlensError, ImportError):
    """An optional package is not installed; the message names the extra to install."""


class RandomWeightsWarning(UserWarning):
    """Finetuning starts from randomly initialised weights (training from scratch in effect)."""


class NothingToReportError(FtlensError):
    """``ftlens report`` was given folders without any result it knows."""


class WeightsPackageError(FtlensError, ImportError):
    """The package that ships a preset's weights is not installed (or its file is not the one expected)."""


class NotImageTextError(FtlensError, ValueError):
    """A zero-shot head or FLYP was asked of a model without a text tower."""


class TrackingError(FtlensError):
    """A tracker was asked for but its package is missing."""
