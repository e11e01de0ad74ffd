"""Helpers for the solo-learn adapter tests, written fresh in the spirit of solo-learn's
tests/methods/utils.py (which is not importable: solo's tests are not packaged)."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import numpy as np
import pytest
from lightning.pytorch import Trainer
from omegaconf import OmegaConf
from PIL import Image
from torchvision.datasets import FakeData

SKIP_REASON = ("solo-learn is not importable: install it from https://github.com/vturrisi/solo-learn "
               "(see docs/solo-learn.md)")
SOLO_LEARN_ROOT = os.environ.get("SOLO_LEARN_ROOT")
needs_solo_root = pytest.mark.skipif(
    not SOLO_LEARN_ROOT or not os.path.isfile(os.path.join(SOLO_LEARN_ROOT or "", "main_pretrain.py")),
    reason="script-level test: set SOLO_LEARN_ROOT to a solo-learn source checkout (main_pretrain.py)")


def augmentation_cfg(crop_size: int = 32, num_crops: int = 2):
    return OmegaConf.create([{
        "rrc": {"enabled": True, "crop_min_scale": 0.5, "crop_max_scale": 1.0},
        "color_jitter": {"prob": 0.0}, "grayscale": {"prob": 0.0}, "gaussian_blur": {"prob": 0.0},
        "solarization": {"prob": 0.0}, "equalization": {"prob": 0.0}, "horizontal_flip": {"prob": 0.5},
        "crop_size": crop_size, "num_crops": num_crops,
    }])


def raw_cfg(dataset="cifar10", train_path="./datasets", **extra):
    """A config as Hydra hands it to main_pretrain.py (before parse_cfg), cf. solo's tests/args."""
    cfg = OmegaConf.create({
        "name": "test", "method": "simclr", "backbone": {"name": "resnet18"},
        "data": {"dataset": dataset, "train_path": str(train_path), "format": "image_folder", "num_workers": 0},
        "augmentations": augmentation_cfg(32),
        "optimizer": {"name": "lars", "batch_size": 16, "lr": 0.3, "classifier_lr": 0.1, "weight_decay": 1e-4},
        "scheduler": {"name": "warmup_cosine"}, "checkpoint": {"enabled": False},
        "auto_resume": {"enabled": False}, "max_epochs": 1, "devices": "1", "accelerator": "cpu",
        **extra,
    })
    OmegaConf.set_struct(cfg, False)
    return cfg


def gen_base_cfg(method: str, batch_size: int = 4, num_classes: int = 10, dataset: str = "cifar10",
                 momentum: bool = False, **method_kwargs):
    """An already-parsed pretrain cfg (parse_cfg is bypassed, as in solo's own method tests)."""
    cfg = OmegaConf.create({
        "name": "test", "method": method, "backbone": {"name": "resnet18"},
        "method_kwargs": method_kwargs,
        "data": {"dataset": dataset, "train_path": ".", "val_path": None, "format": "image_folder",
                 "num_workers": 0, "num_large_crops": 2, "num_small_crops": 0, "num_classes": num_classes,
                 "no_labels": False, "fraction": -1},
        "augmentations": augmentation_cfg(32),
        "optimizer": {"name": "sgd", "batch_size": batch_size, "lr": 0.05, "classifier_lr": 0.1,
                      "weight_decay": 1e-5, "kwargs": {"momentum": 0.9}},
        "scheduler": {"name": "warmup_cosine"},
        "checkpoint": {"enabled": False}, "auto_resume": {"enabled": False},
        "max_epochs": 1, "devices": 1, "accelerator": "cpu", "num_nodes": 1, "seed": 5,
        "performance": {"disable_channel_last": True},
    })
    if momentum:
        cfg.momentum = {"base_tau": 0.99, "final_tau": 1.0}
    OmegaConf.set_struct(cfg, False)
    return cfg


def gen_trainer(cfg, callbacks=None, **kwargs) -> Trainer:
    valid = inspect.signature(Trainer.__init__).parameters
    trainer_kwargs = {k: v for k, v in OmegaConf.to_container(cfg).items() if k in valid}
    trainer_kwargs.update({"logger": False, "enable_checkpointing": False, "fast_dev_run": True,
                           "callbacks": callbacks or [], "enable_progress_bar": False,
                           "enable_model_summary": False, **kwargs})
    return Trainer(**trainer_kwargs)


def fake_train_loader(cfg, size: int = 16, image_size: int = 32):
    """solo's pretraining loader over FakeData (no network): batches [indexes, [crops], targets]."""
    from solo.data.pretrain_dataloader import (FullTransformPipeline, NCropAugmentation, build_transform_pipeline,
                                               dataset_with_index, prepare_dataloader)

    transform = FullTransformPipeline([NCropAugmentation(build_transform_pipeline(cfg.data.dataset, a), a.num_crops)
                                       for a in cfg.augmentations])
    ds = dataset_with_index(FakeData)(size=size, image_size=(3, image_size, image_size),
                                      num_classes=cfg.data.num_classes, transform=transform)
    return prepare_dataloader(ds, batch_size=cfg.optimizer.batch_size, num_workers=0)


def solo_transform(dataset: str = "custom", crop_size: int = 32):
    from solo.data.pretrain_dataloader import FullTransformPipeline, NCropAugmentation, build_transform_pipeline

    return FullTransformPipeline([NCropAugmentation(build_transform_pipeline(dataset, a), a.num_crops)
                                  for a in augmentation_cfg(crop_size)])


def image_folder(root: Path, num_classes: int = 4, per_class: int = 6, size: int = 32, seed: int = 0,
                 labelled: bool = True) -> Path:
    """Random RGB PNGs with a class-dependent channel offset: root/class<c>/img<i>.png (or flat)."""
    rng = np.random.default_rng(seed)
    for c in range(num_classes):
        d = root / f"class{c}" if labelled else root
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a = (rng.random((size, size, 3)) * 160).astype(np.uint8)
            a[..., c % 3] += 60
            Image.fromarray(a).save(d / f"img{c}_{i:03d}.png")
    return root


def save_solo_checkpoint(model, trainer: Trainer, out: Path, cfg) -> Path:
    """A checkpoint in solo's Checkpointer layout: <out>/args.json beside <out>/<name>-ep=0.ckpt."""
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / f"{cfg.name}-test-ep=0.ckpt"
    trainer.save_checkpoint(ckpt)
    (out / "args.json").write_text(json.dumps(OmegaConf.to_container(cfg)))
    return ckpt
