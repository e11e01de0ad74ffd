"""How solo-poisoncam plugs into solo-learn, which has no plugin mechanism.

Verified extension points (docs/solo-learn.md, "How it plugs in"): the ``METHODS`` dict is
mutated in place; ``solo.args.pretrain.parse_cfg`` and ``solo.data.pretrain_dataloader.prepare_datasets``
are replaced on their modules (``main_pretrain.py`` binds them with ``from ... import``, so an
already-running script also needs its globals rebound); ``BaseMethod.configure_callbacks`` is a
late-bound class attribute, so every solo method (and subclass) picks our callbacks up.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any, Callable, Dict, Optional

from solo_poisoncam.checks import PoisonCamError

WRAPPED = "__poisoncam_wrapped__"  # attribute of our wrappers: the solo function they wrap

STATE = SimpleNamespace(registered=False, cfg=None, linear_cfg=None)


def import_solo():
    try:
        import solo  # noqa: F401
        import solo.args.pretrain  # noqa: F401
        import solo.data.pretrain_dataloader  # noqa: F401
        import solo.methods  # noqa: F401
    except ImportError as e:
        from solo_poisoncam.solo_adapter import SOLO_INSTALL_HELP

        raise PoisonCamError(f"{SOLO_INSTALL_HELP}\n(import error: {e})") from e
    return solo


def wrap_parse_cfg(parse_cfg: Callable) -> Callable:
    """solo's ``parse_cfg``, then our ``poison.*`` / ``detect.*`` defaults and checks; the parsed cfg
    is remembered for the dataset wrapper (``prepare_datasets`` gets no cfg)."""

    @functools.wraps(parse_cfg)
    def wrapper(cfg):
        from solo_poisoncam.solo_adapter.config import add_and_assert_detect_cfg, add_and_assert_poison_cfg

        cfg = parse_cfg(cfg)
        cfg = add_and_assert_poison_cfg(cfg)
        cfg = add_and_assert_detect_cfg(cfg)
        STATE.cfg = cfg
        return cfg

    setattr(wrapper, WRAPPED, parse_cfg)
    return wrapper


def wrap_prepare_datasets(prepare_datasets: Callable) -> Callable:
    """solo's ``prepare_datasets`` (including its ``data.fraction`` subsetting), then the poison
    wrapper when the last parsed cfg has ``poison.enabled``."""

    @functools.wraps(prepare_datasets)
    def wrapper(dataset, *args, **kwargs):
        from solo_poisoncam.solo_adapter.config import poison_enabled
        from solo_poisoncam.solo_adapter.dataset import poison_solo_dataset

        train_dataset = prepare_datasets(dataset, *args, **kwargs)
        cfg = STATE.cfg
        if cfg is None or not poison_enabled(cfg):
            return train_dataset
        if dataset != cfg.data.dataset:
            raise PoisonCamError(f"prepare_datasets('{dataset}') does not match the parsed config "
                                 f"(data.dataset={cfg.data.dataset}); call parse_cfg on this run's config first")
        poisoned = poison_solo_dataset(train_dataset, cfg)
        cfg.poison.num_poisons = poisoned.manifest.num_poisons  # lands in args.json
        _info(poisoned.manifest.summary())
        return poisoned

    setattr(wrapper, WRAPPED, prepare_datasets)
    return wrapper


def wrap_linear_parse_cfg(parse_cfg: Callable) -> Callable:
    """solo's linear ``parse_cfg``; remembers the cfg so the custom-data pipeline can follow
    ``data.image_size`` / ``data.mean`` / ``data.std`` (see :func:`wrap_build_custom_pipeline`)."""

    @functools.wraps(parse_cfg)
    def wrapper(cfg):
        cfg = parse_cfg(cfg)
        STATE.linear_cfg = cfg
        return cfg

    setattr(wrapper, WRAPPED, parse_cfg)
    return wrapper


def custom_pipeline(size: int, mean, std) -> Dict[str, Any]:
    """solo-learn's custom-data linear pipeline at ``size`` px with the data's own statistics
    (solo's own is fixed at 224 px with ImageNet statistics: a 32 px model then sees 7x upsampled
    images, normalised for other data)."""
    from torchvision import transforms

    norm = transforms.Normalize(mean=list(mean), std=list(std))
    return {
        "T_train": transforms.Compose([transforms.RandomResizedCrop(size=size, scale=(0.08, 1.0)),
                                       transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm]),
        "T_val": transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(), norm]),
    }


def wrap_build_custom_pipeline(build: Callable) -> Callable:
    """``build_custom_pipeline`` (solo's documented place for custom-data transforms): ours when the
    linear cfg sets ``data.image_size``, solo's otherwise."""

    @functools.wraps(build)
    def wrapper():
        from omegaconf import OmegaConf

        cfg = getattr(STATE, "linear_cfg", None)
        size = None if cfg is None else OmegaConf.select(cfg, "data.image_size", default=None)
        if size is None:
            return build()
        from solo_poisoncam.models.threat_model import IMAGENET_MEAN_STD

        mean = OmegaConf.select(cfg, "data.mean", default=None) or IMAGENET_MEAN_STD[0]
        std = OmegaConf.select(cfg, "data.std", default=None) or IMAGENET_MEAN_STD[1]
        return custom_pipeline(int(size), mean, std)

    setattr(wrapper, WRAPPED, build)
    return wrapper


def configure_callbacks(self):
    """``BaseMethod.configure_callbacks``: the poison record / manifest writer, and the detector when
    ``detect.enabled``."""
    from solo_poisoncam.solo_adapter.callbacks import DetectionCallback, ManifestCallback
    from solo_poisoncam.solo_adapter.config import detect_enabled

    previous = getattr(configure_callbacks, WRAPPED)
    callbacks = list(previous(self) or []) if previous is not None else []
    cfg = getattr(self, "cfg", None)
    if cfg is None:
        return callbacks
    callbacks.append(ManifestCallback())
    if detect_enabled(cfg):
        callbacks.append(DetectionCallback(cfg))
    return callbacks


setattr(configure_callbacks, WRAPPED, None)  # the BaseMethod.configure_callbacks we chain to, set by register()


def _info(message: str) -> None:
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank == 0:
        print(f"[solo-poisoncam] {message}")


# our CPU-sized backbones, offered to every solo method as backbone.name=<name>
SOLO_BACKBONES = ("cnn_small", "cnn")


def solo_backbone(name: str) -> Callable:
    """solo's backbone factory signature, ``fn(method, **kwargs)``, for one of ours (same modules and
    state_dict keys, so its checkpoints load with our loader)."""
    from solo_poisoncam.models.backbones import create_backbone

    def build(method: str, **kwargs: Any):
        return create_backbone(name, **kwargs)

    build.__name__ = name
    setattr(build, WRAPPED, name)
    return build


def register_backbones(base_method) -> None:
    for name in SOLO_BACKBONES:
        current = base_method._BACKBONES.get(name)
        if current is None:
            base_method._BACKBONES[name] = solo_backbone(name)
        elif not _is_ours(current):
            raise PoisonCamError(f"solo-learn already has a backbone named '{name}'")


def _is_ours(fn) -> bool:
    return getattr(fn, WRAPPED, None) is not None


def register(main_globals: Optional[Dict[str, Any]] = None) -> None:
    """See :func:`solo_poisoncam.solo_adapter.register`."""
    import_solo()
    import solo.args.linear as solo_linear_args
    import solo.args.pretrain as solo_args
    import solo.data.classification_dataloader as solo_cls_data
    import solo.data.pretrain_dataloader as solo_data
    from solo.methods import METHODS
    from solo.methods.base import BaseMethod

    from solo_poisoncam.solo_adapter.cluster_head import ClusterHead

    current = METHODS.get("cluster_head")
    if current is not None and current is not ClusterHead and current.__module__ != ClusterHead.__module__:
        raise PoisonCamError(f"solo.methods.METHODS['cluster_head'] is already taken by {current.__module__}."
                             f"{current.__name__}")
    METHODS["cluster_head"] = ClusterHead
    register_backbones(BaseMethod)

    if not _is_ours(solo_linear_args.parse_cfg):
        solo_linear_args.parse_cfg = wrap_linear_parse_cfg(solo_linear_args.parse_cfg)
    if not _is_ours(solo_cls_data.build_custom_pipeline):
        solo_cls_data.build_custom_pipeline = wrap_build_custom_pipeline(solo_cls_data.build_custom_pipeline)
    if not _is_ours(solo_args.parse_cfg):
        solo_args.parse_cfg = wrap_parse_cfg(solo_args.parse_cfg)
    if not _is_ours(solo_data.prepare_datasets):
        solo_data.prepare_datasets = wrap_prepare_datasets(solo_data.prepare_datasets)
    if BaseMethod.__dict__.get("configure_callbacks") is not configure_callbacks:
        setattr(configure_callbacks, WRAPPED, BaseMethod.__dict__.get("configure_callbacks"))
        BaseMethod.configure_callbacks = configure_callbacks

    if main_globals is not None:  # Option B: main_pretrain.py / main_linear.py already ran their `from ... import`s
        for name, module in (("parse_cfg", solo_args), ("parse_cfg", solo_linear_args),
                             ("prepare_datasets", solo_data)):
            ours = getattr(module, name)
            if main_globals.get(name) is getattr(ours, WRAPPED):
                main_globals[name] = ours
    STATE.registered = True


__all__ = ["register", "wrap_parse_cfg", "wrap_prepare_datasets", "wrap_linear_parse_cfg", "wrap_build_custom_pipeline",
           "custom_pipeline", "configure_callbacks", "STATE", "import_solo"]
