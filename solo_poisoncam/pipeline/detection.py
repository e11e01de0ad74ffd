"""One detection folder, the one way: detect -> score against the manifest -> backdoor check -> write.
``poisoncam detect``, the run chain and the solo-learn callback all call :func:`detect_to_folder`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from solo_poisoncam.data.indexed import IndexedImages
from solo_poisoncam.detect.config import DetectConfig
from solo_poisoncam.detect.outputs import write_detection_outputs
from solo_poisoncam.detect.pipeline import DetectionResult, run_detection
from solo_poisoncam.engine.cache import StageCache
from solo_poisoncam.engine.runner import Runner


def detect_to_folder(model, dataset, cfg: DetectConfig, out, runner: Runner, cache: StageCache, manifest=None,
                     backdoor: Optional[Callable[[], Dict[str, Any]]] = None,
                     extra: Optional[Dict[str, Any]] = None) -> Tuple[DetectionResult, Dict[str, Any], Optional[Path]]:
    """Run the detector and write ``out`` (metrics.json last). ``manifest``: ground truth for the metrics;
    ``backdoor``: measures the threat model's backdoor check for metrics.json (every rank calls it).

    Returns the result, the extra entries written to metrics.json, and metrics.json's path (rank 0; else None).
    """
    result = run_detection(model, dataset, cfg, runner, cache)
    if manifest is not None:
        from solo_poisoncam.eval.detection import score_detection

        score_detection(result, manifest)
    extra = dict(extra or {})
    if backdoor is not None:
        extra["backdoor"] = backdoor()
    path = None
    if runner.is_main:
        path = write_detection_outputs(result, Path(out), IndexedImages(dataset, size=model.image_size), model, extra)
    return result, extra, path
