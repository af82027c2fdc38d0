"""Data: image-set types, the source registry, the embedded builders, on-disk readers, benchmark specs and the
data-check report. Importing the package registers the built-in sources.

Modules: `sets` (ImageSet, FileImageSet, image decoding), `sources` (registry, probes), `embedded` (mnist5k's
builders from PyPI package data), `readers` (CIFAR/SVHN/ImageNet/OpenOOD files under a data root), `spec`
(benchmark spec files), `check` (data check), `benchmarks` (loading a spec into sets).
"""

from harness.data import embedded, readers, text  # noqa: F401  (register the built-in sources)
from harness.data.sets import AnyImageSet, FileImageSet, ImageSet

__all__ = ["AnyImageSet", "FileImageSet", "ImageSet"]
