"""``pretrain``: train a threat model with the built-in Lightning backend (solo-learn's checkpoint layout)."""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from solo_poisoncam import __version__
from solo_poisoncam.checks import check
from solo_poisoncam.data import build_dataset, dataset_from_spec
from solo_poisoncam.io import hash_obj, read_json, write_json, write_text
from solo_poisoncam.poison import PoisonedDataset, PoisonManifest
from solo_poisoncam.ssl.base import SSL_METHODS
from solo_poisoncam.data.indexed import IndexedImages, image_side


@dataclass
class PretrainConfig:
    """Settings of one built-in SSL run. ``manifest`` (poisoned) or ``dataset`` (clean) names the data."""

    out: str
    method: str = "byol"
    backbone: str = "cnn_small"
    backbone_kwargs: Dict[str, Any] = field(default_factory=dict)
    manifest: Optional[str] = None
    dataset: Optional[Dict[str, Any]] = None
    keep: Optional[Sequence[int]] = None
    image_size: Optional[int] = None
    max_epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    scheduler: str = "none"              # "none" or "cosine" (per step, after ``warmup_epochs`` of linear warm-up)
    warmup_epochs: float = 0.0
    method_kwargs: Dict[str, Any] = field(default_factory=dict)
    crop_scale: Tuple[float, float] = (0.2, 1.0)
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    seed: int = 0
    name: Optional[str] = None
    accelerator: str = "auto"
    devices: Any = 1
    precision: Optional[str] = None
    num_workers: int = 0
    progress: bool = True
    wandb: bool = False                 # also log to Weights & Biases (CSV always); not part of the run identity
    wandb_project: str = "solo-poisoncam"


def _load_data(cfg: PretrainConfig):
    manifest = None
    if cfg.manifest is not None:
        manifest = PoisonManifest.load(cfg.manifest)
        data = PoisonedDataset.from_manifest(manifest)
        base = data.base
    else:
        check(cfg.dataset is not None, "pretrain needs a poison manifest or a dataset spec")
        base = dataset_from_spec(cfg.dataset) if "name" in cfg.dataset else build_dataset(**cfg.dataset)
        data = base
    return base, data, manifest


def run_config(cfg: PretrainConfig, base, manifest: Optional[PoisonManifest]) -> Dict[str, Any]:
    """The args.json of the run (solo-learn-like keys, read back by ``load_threat_model``)."""
    method_cls = SSL_METHODS.get(cfg.method)
    method_kwargs = {**method_cls.DEFAULTS, **cfg.method_kwargs}
    keep = None if cfg.keep is None else np.asarray(sorted(int(i) for i in cfg.keep), dtype=np.int64)
    name = cfg.name or f"{cfg.method}-{base.name}" + ("-poisoned" if manifest else "") + ("-kept" if keep is not None else "")
    return {
        "name": name,
        "backend": "builtin",
        "solo_poisoncam_version": __version__,
        "method": cfg.method,
        "backbone": {"name": cfg.backbone, "kwargs": dict(cfg.backbone_kwargs)},
        "method_kwargs": method_kwargs,
        "optimizer": {"name": "adamw", "batch_size": cfg.batch_size, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
        "scheduler": cfg.scheduler,
        **({"warmup_epochs": cfg.warmup_epochs} if cfg.warmup_epochs else {}),  # absent at 0: older runs keep their key
        "augment": {"crop_scale": list(cfg.crop_scale), "grayscale_p": cfg.grayscale_p, "blur_p": cfg.blur_p},
        "max_epochs": cfg.max_epochs,
        "seed": cfg.seed,
        "data": {"dataset": base.name, "spec": base.spec, "fingerprint": base.fingerprint(),
                 "num_samples": len(base), "num_classes": base.num_classes,
                 "image_size": image_side(base, cfg.image_size), "mean": list(base.mean), "std": list(base.std),
                 "keep": None if keep is None else {"count": int(len(keep)), "hash": hash_obj(keep)}},
        "poison": None if manifest is None else {
            "manifest": str(Path(cfg.manifest).resolve()), "attack": manifest.attack, "target": manifest.target,
            "num_poisons": manifest.num_poisons, "fingerprint": manifest.fingerprint,
            "poisons_hash": hash_obj(manifest.indexes, manifest.boxes)},
    }


RESUME_IGNORES = ("solo_poisoncam_version",)


def _same_run(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    strip = lambda d: {k: v for k, v in d.items() if k not in RESUME_IGNORES}  # noqa: E731
    return hash_obj(strip(a)) == hash_obj(strip(b))


def _extends(old: Dict[str, Any], new: Dict[str, Any]) -> bool:
    """``new`` trains the run ``old`` for more epochs (nothing else differs): resume it. Refused under
    a cosine schedule, whose learning rate at every step depends on the total."""
    if new["max_epochs"] <= old.get("max_epochs", new["max_epochs"]):
        return False
    if not _same_run({**old, "max_epochs": new["max_epochs"]}, new):
        return False
    check(new.get("scheduler", "none") == "none",
          f"cannot extend a run with a cosine schedule from {old['max_epochs']} to {new['max_epochs']} epochs: its "
          "learning rate depends on the total; train a new run (another --out)")
    return True


def final_checkpoint(out: Path, run_cfg: Dict[str, Any]) -> Path:
    return out / f"{run_cfg['name']}-ep={run_cfg['max_epochs'] - 1}.ckpt"


def pretrain(cfg: PretrainConfig) -> Path:
    """Train (or resume, or reuse) a threat model; returns the final checkpoint path.

    ``out`` holds ``args.json``, ``last.ckpt`` (resume point), ``<name>-ep=<E>.ckpt`` per epoch
    (previous ones removed), ``metrics.csv`` and a copy of the poison manifest. Re-running with
    the same settings resumes, and more ``max_epochs`` (nothing else changed) trains on from the
    last epoch; other settings in the same folder are refused.
    """
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    _quiet_lightning()

    out = Path(cfg.out)
    base, data, manifest = _load_data(cfg)
    run_cfg = run_config(cfg, base, manifest)
    final = final_checkpoint(out, run_cfg)
    args_path = out / "args.json"
    resume = None
    if args_path.exists():
        old = read_json(args_path)
        extend = _extends(old, run_cfg)
        check(_same_run(old, run_cfg) or extend, f"'{out}' holds a run with other settings; choose another --out "
                                                 "or delete it")
        if final.exists():
            return final
        if (out / "last.ckpt").exists():
            resume = str(out / "last.ckpt")
        check(not extend or resume is not None, f"'{out}' has no last.ckpt to train on from")

    # everything that can refuse the inputs runs before the run folder's first file is written
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    images = IndexedImages(data, cfg.keep, size=cfg.image_size)
    check(len(images) >= cfg.batch_size,
          f"{len(images)} training images is fewer than one batch of {cfg.batch_size}; lower --batch-size")
    loader = torch.utils.data.DataLoader(images, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                                         num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
    model = SSL_METHODS.get(cfg.method)(run_cfg)

    created = not out.exists()
    # what this call adds to the folder: removed again if a new run fails before its first checkpoint
    new_paths = [] if args_path.exists() else [
        q for q in (args_path, out / "manifest.json", out / "logs", out / "wandb") if not q.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_json(args_path, run_cfg)
        if manifest is not None:
            src = Path(cfg.manifest) / "manifest.json" if os.path.isdir(cfg.manifest) else cfg.manifest
            shutil.copyfile(src, out / "manifest.json")
        ckpt_cb = ModelCheckpoint(dirpath=out, filename=f"{run_cfg['name']}-ep={{epoch}}",
                                  auto_insert_metric_name=False, save_last=True, save_top_k=1, monitor="epoch",
                                  mode="max", every_n_epochs=1)
        gpu = torch.cuda.is_available() and cfg.accelerator != "cpu"
        precision = cfg.precision or ("16-mixed" if gpu else "32-true")
        loggers = [CSVLogger(out, name="", version="logs")]
        if cfg.wandb:
            loggers.append(_wandb_logger(cfg, run_cfg, out))
        # a bar on a terminal; in a log file one plain line per epoch instead of carriage-return noise
        bar = cfg.progress and sys.stdout.isatty()
        callbacks = [ckpt_cb] + ([EpochLine()] if cfg.progress and not bar else [])
        trainer = pl.Trainer(max_epochs=cfg.max_epochs, accelerator=cfg.accelerator, devices=cfg.devices,
                             precision=precision, logger=loggers,
                             callbacks=callbacks, enable_progress_bar=bar, enable_model_summary=False,
                             log_every_n_steps=max(1, min(10, len(loader))), num_sanity_val_steps=0)
        history = _read_csv(out / "logs" / "metrics.csv") if resume else []
        trainer.fit(model, loader, ckpt_path=resume)
    except BaseException:
        if new_paths and not (out / "last.ckpt").exists():
            _remove_unstarted_run(out, new_paths, created)
        raise
    if history:  # Lightning's CSVLogger starts the file anew on resume: put the earlier epochs back
        _merge_csv(out / "logs" / "metrics.csv", history)
    check(final.exists(), f"training ended without writing '{final}'")
    return final


def _remove_unstarted_run(out: Path, paths: Sequence[Path], created: bool) -> None:
    """A new run that failed before its first checkpoint leaves nothing (a re-run starts it anew
    anyway, and a lone args.json would only look like a run to resume): ``paths`` are what it added."""
    for q in paths:
        if q.is_dir():
            shutil.rmtree(q, ignore_errors=True)
        else:
            q.unlink(missing_ok=True)
    if created:
        try:
            out.rmdir()
        except OSError:  # not empty: someone else's files, or the run lock (which removes it)
            pass


class EpochLine(Callback):
    """``epoch 3/20: train_byol_loss 0.412, 41.2 s`` once per epoch (rank 0)."""

    def on_train_epoch_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return
        losses = {k: float(v) for k, v in trainer.callback_metrics.items() if k.endswith("_loss_epoch")}
        text = ", ".join(f"{k[:-6]} {v:.4f}" for k, v in losses.items())
        print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {text}, "
              f"{time.perf_counter() - self.start:.1f} s", flush=True)


def _read_csv(path: Path):
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _merge_csv(path: Path, history) -> None:
    """metrics.csv = the rows of the epochs before the resume + the new rows (union of columns)."""
    new = _read_csv(path)
    first = min((int(r["epoch"]) for r in new if r.get("epoch")), default=None)
    old = [r for r in history if first is None or (r.get("epoch") and int(r["epoch"]) < first)]
    rows = old + new
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def _quiet_lightning() -> None:
    """Lightning's start-up chatter (accelerator lines, tips) and two expected warnings: the run
    folder is reused on purpose (resume), and a pytree deprecation inside Lightning itself."""
    import logging
    import warnings

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def _wandb_logger(cfg: PretrainConfig, run_cfg: Dict[str, Any], out: Path):
    try:
        import wandb  # noqa: F401
        from lightning.pytorch.loggers import WandbLogger
    except ImportError as e:
        from solo_poisoncam.checks import PoisonCamError

        raise PoisonCamError("--wandb needs Weights & Biases: pip install 'solo-poisoncam[wandb]'") from e
    logger = WandbLogger(project=cfg.wandb_project, name=run_cfg["name"], save_dir=str(out))
    logger.log_hyperparams(run_cfg)
    return logger


def config_from_dict(d: Dict[str, Any]) -> PretrainConfig:
    names = {f.name for f in dataclasses.fields(PretrainConfig)}
    unknown = set(d) - names
    check(not unknown, f"unknown pretrain settings {sorted(unknown)}; valid: {sorted(names)}")
    return PretrainConfig(**d)
