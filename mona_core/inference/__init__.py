"""Inference stage: segment volumes with an exported model directory, without torch.

Only numpy, scipy, SimpleITK and onnxruntime are imported here (a test checks it), so serving needs no torch.
"""

from mona_core.export.manifest import Manifest, ManifestError, load_model_dir
from mona_core.inference.batch import BatchItem, Segmented, Timings, segment_folder, segment_scan
from mona_core.inference.segmenter import Segmenter, available_providers

__all__ = [
    "BatchItem",
    "Manifest",
    "ManifestError",
    "Segmented",
    "Segmenter",
    "Timings",
    "available_providers",
    "load_model_dir",
    "segment_folder",
    "segment_scan",
]
