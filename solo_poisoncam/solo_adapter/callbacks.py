"""Lightning callbacks that every solo-learn method gets once :func:`register` ran.

* :class:`ManifestCallback`: writes the poison manifest beside the checkpoint (next to solo's
  ``args.json``), keeps a small poison record in the checkpoint, and refuses a resume whose record
  differs (solo's AutoResumer does not compare poison settings).
* :class:`DetectionCallback`: at the end of training, runs our detector on the training set as
  solo served it (poisons included) but without augmentation, with the backbone just trained.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from solo_poisoncam.checks import PoisonCamError
from solo_poisoncam.io import hash_obj

MANIFEST_NAME = "manifest.json"


def run_dir(trainer) -> Optional[Path]:
    """The folder of solo's ``args.json`` and checkpoints (``Checkpointer.path``), if there is one."""
    for cb in trainer.callbacks:
        if type(cb).__name__ == "Checkpointer" and getattr(cb, "path", None) is not None:
            return Path(cb.path)
    return None


def output_dir(trainer) -> Path:
    """``Checkpointer.path``; without a Checkpointer (``checkpoint.enabled=False``) the logger's
    folder, else the working directory."""
    d = run_dir(trainer)
    if d is not None:
        return d
    log_dir = getattr(trainer, "log_dir", None)
    return Path(log_dir) if log_dir else Path(os.getcwd())


def _last_checkpoint(trainer) -> Optional[str]:
    for cb in trainer.callbacks:
        if type(cb).__name__ == "Checkpointer" and getattr(cb, "last_ckpt", None):
            return str(cb.last_ckpt)
    return None


def _select_val_path(cfg: DictConfig) -> Optional[str]:
    value = OmegaConf.select(cfg, "data.val_path", default=None)
    return None if value in (None, "None") else str(value)


def _train_dataset(trainer):
    loader = trainer.train_dataloader
    return getattr(loader, "dataset", None)


def poison_record(manifest) -> Dict[str, Any]:
    """What a checkpoint remembers of its poisons: ints and strings only, so ``main_linear.py`` can
    still ``torch.load(..., weights_only=True)`` it."""
    if manifest is None:
        return {"poisoned": False}
    return {"poisoned": True, "num_samples": int(manifest.num_samples), "num_poisons": int(manifest.num_poisons),
            "fingerprint": str(manifest.fingerprint),
            "poisons": hash_obj(manifest.attack, manifest.indexes, manifest.boxes)}


class ManifestCallback(Callback):
    """Writes ``manifest.json`` beside ``args.json`` and guards resumes against other poisons."""

    def __init__(self):
        self.record: Optional[Dict[str, Any]] = None
        self.resumed: Optional[Dict[str, Any]] = None
        self.path: Optional[Path] = None

    def state_dict(self) -> Dict[str, Any]:
        return dict(self.record or {})

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.resumed = dict(state_dict)

    def on_train_start(self, trainer, pl_module) -> None:
        manifest = getattr(_train_dataset(trainer), "manifest", None)
        self.record = poison_record(manifest)
        if trainer.ckpt_path is not None:
            if self.resumed and self.resumed != self.record:
                raise PoisonCamError(
                    f"refusing to resume from '{trainer.ckpt_path}': it was trained with other poisons "
                    f"({self.resumed}) than this run ({self.record}). solo-learn's AutoResumer does not compare "
                    "poison settings: set auto_resume.enabled=False, or give this run another `name`.")
            if not self.resumed and manifest is not None:
                warnings.warn(f"resuming from '{trainer.ckpt_path}', which holds no poison record: it may have been "
                              "trained on other (e.g. clean) data", UserWarning)
        if manifest is not None and trainer.is_global_zero:
            self._write(trainer, manifest)

    def on_train_end(self, trainer, pl_module) -> None:
        manifest = getattr(_train_dataset(trainer), "manifest", None)
        moved = run_dir(trainer) is not None and self.path is not None and run_dir(trainer) != self.path.parent
        if manifest is not None and trainer.is_global_zero and (self.path is None or moved):
            self._write(trainer, manifest)  # the Checkpointer set its folder after our on_train_start

    def _write(self, trainer, manifest) -> None:
        self.path = output_dir(trainer) / MANIFEST_NAME
        manifest.save(self.path)
        print(f"[solo-poisoncam] {manifest.summary()} -> {self.path}")


def threat_model_from_module(pl_module, cfg: DictConfig):
    """A frozen copy of ``pl_module.backbone`` as our :class:`ThreatModel` (inputs in [0, 1],
    normalised with solo's mean/std of this data set). The trained module itself is untouched."""
    from solo_poisoncam.models.threat_model import ThreatModel, run_mean_std

    # contiguous like a backbone loaded from its checkpoint (solo trains channels_last unless
    # performance.disable_channel_last): the other layout rounds differently, enough to flip near-ties
    backbone = copy.deepcopy(pl_module.backbone).float().to(memory_format=torch.contiguous_format)
    backbone.num_features = int(pl_module.features_dim)
    if not hasattr(backbone, "feature_layer"):  # the Grad-CAM layer (PatchSearch)
        if hasattr(backbone, "layer4"):
            backbone.feature_layer = backbone.layer4
        elif hasattr(backbone, "block3") and hasattr(backbone, "relu"):  # solo's WideResNet: relu(bn1(block3))
            backbone.feature_layer = backbone.relu
    for p in backbone.parameters():
        p.requires_grad_(False)
    config = OmegaConf.to_container(cfg, resolve=True)
    mean, std = run_mean_std(config)
    # the cache key of the detector's stages: the weights themselves (the last saved checkpoint may be older)
    weights = hash_obj(*[v.detach().float().cpu().numpy() for v in backbone.state_dict().values()])
    return ThreatModel(backbone, mean, std, config, checkpoint=f"{cfg.name}@weights:{weights}").eval()


def detection_data(dataset, cfg: DictConfig):
    """(images to detect on without augmentation, manifest or None) for solo's training set."""
    from solo_poisoncam.solo_adapter.dataset import PoisonedSoloDataset, view_from_cfg

    if isinstance(dataset, PoisonedSoloDataset):
        return dataset.eval_view(), dataset.manifest
    if dataset is None:
        raise PoisonCamError("detection found no training dataset on the trainer (DALI data module?); "
                             "use data.format=image_folder")
    return view_from_cfg(dataset, cfg), None


class DetectionCallback(Callback):
    """Runs :func:`run_detection` at ``on_train_end`` and writes its outputs to
    ``<checkpoint dir>/detect-<detect.method>/`` (or ``detect.dir``).

    Every rank takes part (the detector shards its work over the DDP process group); only rank 0
    writes. Settings: ``cfg.detect.*``, the fields of :class:`DetectConfig`.
    """

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.out: Optional[Path] = None
        self.result = None

    def on_train_end(self, trainer, pl_module) -> None:
        from solo_poisoncam.detect.outputs import summary_line
        from solo_poisoncam.engine.cache import StageCache
        from solo_poisoncam.engine.runner import Runner
        from solo_poisoncam.pipeline.detection import detect_to_folder
        from solo_poisoncam.solo_adapter.config import detect_config

        cfg = self.cfg
        dcfg = detect_config(cfg)
        data, manifest = detection_data(_train_dataset(trainer), cfg)
        model = threat_model_from_module(pl_module, cfg)
        device = torch.device(cfg.detect.device) if cfg.detect.device else pl_module.device
        runner = Runner(device, progress=bool(cfg.detect.progress))
        out = (Path(cfg.detect.dir) if cfg.detect.dir else output_dir(trainer) / f"detect-{dcfg.method}").resolve()
        cache = StageCache(out / "cache", enabled=bool(cfg.detect.cache), runner=runner)
        ckpt = _last_checkpoint(trainer)
        # current_epoch counts finished epochs at on_train_end; the last one trained is the
        # E of solo's "<name>-ep=E.ckpt"
        extra = {"solo": {"method": cfg.method, "name": cfg.name, "epoch": int(trainer.current_epoch) - 1,
                          "global_step": int(trainer.global_step),
                          "checkpoint": str(Path(ckpt).resolve()) if ckpt else None},
                 "manifest": str((output_dir(trainer) / MANIFEST_NAME).resolve()) if manifest is not None else None}
        backdoor = (lambda: self._backdoor(model, data, runner, dcfg.seed, out)) if manifest is not None else None
        result, extra, path = detect_to_folder(model, data, dcfg, out, runner, cache, manifest, backdoor, extra)
        self.result, self.out = result, out
        if path is not None:
            b = extra.get("backdoor")
            print(f"[solo-poisoncam] {summary_line(result, b if 'learned' in (b or {}) else None)} -> {path}")
        self._log(trainer, result.metrics)

    def _backdoor(self, model, data, runner, seed: int, out: Path) -> Dict[str, Any]:
        """Backdoor strength, as ``poisoncam detect`` measures it, when a held-out split exists
        (``data.val_path``, or a ``val``/``test`` folder beside ``data.train_path``)."""
        from solo_poisoncam.eval.backdoor import backdoor_report, backdoor_summary

        val_root = _select_val_path(self.cfg)
        try:
            report = backdoor_report(model.checkpoint, model, data, runner, seed=seed, val_root=val_root, out=out)
        except PoisonCamError as e:
            return {"not_measured": f"no patched validation split could be built: {e}"}
        return backdoor_summary(report)

    @staticmethod
    def _log(trainer, metrics: Dict[str, Any]) -> None:
        scalars = {f"detect_{k}": float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.global_step)


__all__ = ["ManifestCallback", "DetectionCallback", "threat_model_from_module", "detection_data", "poison_record",
           "run_dir", "output_dir"]
