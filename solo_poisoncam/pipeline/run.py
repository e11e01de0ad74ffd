"""The whole chain as resumable stages: poison -> threat model -> detect -> retrain -> evaluate -> report.

Every stage writes into its own folder under OUT and is skipped when its output is complete and
was made with the same settings; an interrupted run resumes where it stopped (training resumes
from its last checkpoint, detection from its stage cache).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from solo_poisoncam.checks import PoisonCamError, check
from solo_poisoncam.eval.backdoor import describe_outcome
from solo_poisoncam.eval.downstream import targeted_beyond_clean
from solo_poisoncam.io import hash_file, hash_obj, read_json, write_json


def _pretrain_cfg(cfg: Dict[str, Any], out: Path, **kw):
    from solo_poisoncam.ssl import PretrainConfig

    p = cfg["pretrain"]
    optional = {k: p[k] for k in PRETRAIN_OPTIONAL if k in p}
    if "crop_scale" in optional:
        optional["crop_scale"] = tuple(optional["crop_scale"])
    return PretrainConfig(out=str(out), method=p["method"], backbone=p["backbone"], max_epochs=p["epochs"],
                          batch_size=p["batch_size"], lr=p["lr"], seed=cfg["seed"],
                          method_kwargs=p.get("method_kwargs", {}), wandb=p.get("wandb", False), **optional, **kw)


# pretrain keys a run config may set beyond the required ones (PretrainConfig fields of the same name)
PRETRAIN_OPTIONAL = ("backbone_kwargs", "weight_decay", "scheduler", "warmup_epochs", "crop_scale", "grayscale_p",
                     "blur_p", "image_size")


def _finished(path: Path, key: Dict[str, Any]) -> bool:
    """A stage's output exists and was made under ``key`` (compared as JSON: tuples come back as lists)."""
    return path.is_file() and hash_obj(read_json(path).get("key")) == hash_obj(key)


def data_spec(cfg: Dict[str, Any]) -> Dict[str, Any]:
    d = dict(cfg["data"])
    return {"name": d.pop("dataset"), "split": "train", **d}


def model_pretrain_cfg(cfg: Dict[str, Any], run: Path, model: str, out: Path, keep=None, progress: bool = True):
    """The pretraining of one of run folder ``run``'s models: ``undefended`` (the poisoned set, the
    threat model), ``clean-data`` (every image, the poisons as their clean originals) or a detector's
    kept set (``keep``, its indexes), with the run's settings and ``cfg["seed"]``."""
    if model == "clean-data":
        return _pretrain_cfg(cfg, out, dataset=data_spec(cfg), progress=progress)
    check(model == "undefended" or keep is not None, f"model '{model}' needs its kept indexes")
    return _pretrain_cfg(cfg, out, manifest=str(Path(run) / "poison"), keep=keep, progress=progress)


def evaluate_checkpoint(cfg: Dict[str, Any], run: Path, ckpt) -> Dict[str, Any]:
    """Downstream metrics of ``ckpt`` under the run's evaluation settings and seed, against run folder
    ``run``'s attack and target (not cached: ``Chain.evaluate`` caches)."""
    from solo_poisoncam.data import dataset_from_spec
    from solo_poisoncam.engine.runner import Runner
    from solo_poisoncam.eval.downstream import evaluate_backbone
    from solo_poisoncam.models.threat_model import load_threat_model
    from solo_poisoncam.poison import PoisonManifest, build_attack

    e = cfg["eval"]
    m = PoisonManifest.load(Path(run) / "poison")
    train = dataset_from_spec(data_spec(cfg))
    val = dataset_from_spec({**data_spec(cfg), "split": "test", "num_samples": e.get("val_images")})
    return evaluate_backbone(load_threat_model(ckpt), train, val, build_attack(m.attack), m.target,
                             e["label_fractions"], cfg["seed"], e.get("knn_k", 20), Runner(progress=False),
                             label_draws=e.get("label_draws", 1))


class Chain:
    """One run folder. ``log`` receives one line per stage."""

    def __init__(self, cfg: Dict[str, Any], out: Path, progress: bool = True, log: Callable[[str], None] = print):
        self.cfg, self.out, self.progress, self.log = cfg, Path(out), progress, log
        self.timings: Dict[str, float] = {}
        self.results: Dict[str, Any] = {"config": cfg, "stages": {}}

    def stage(self, name: str, fn: Callable[[], Any]) -> Any:
        self.log(f"[{name}] ...")
        start = time.perf_counter()
        value = fn()
        self.timings[name] = round(time.perf_counter() - start, 2)
        self.log(f"[{name}] done in {self.timings[name]:.1f}s")
        return value

    # -- stages ---------------------------------------------------------------------------------
    def poison(self):
        from solo_poisoncam.poison import PoisonManifest
        from solo_poisoncam.poison.outputs import poison_dataset, write_poison_outputs

        folder = self.out / "poison"
        p = self.cfg["poison"]
        if p.get("write_folder"):
            return self.write_folder(folder)
        attack = {"name": p["attack"]}
        if p["attack"] != "frequency":
            attack["trigger"] = p.get("trigger", {"kind": "htba", "seed": 10})
        for key in ("size", "alpha", "magnitude", "window", "region", "jpeg"):
            if key in p and not (key in ("size", "region", "jpeg") and p["attack"] != "patch"):
                attack[key] = p[key]
        spec = data_spec(self.cfg)
        if (folder / "manifest.json").is_file():
            m = PoisonManifest.load(folder)
            check(m.attack.get("name") == p["attack"] and m.target == p["target"] and m.rate == p["rate"]
                  and m.seed == self.cfg["seed"] and m.dataset.get("num_samples") == spec.get("num_samples"),
                  f"'{folder}' holds a poisoning with other settings; use another --out")
            return m
        name = spec.pop("name")
        split = spec.pop("split")
        dataset, attack_obj, m = poison_dataset(name, split, spec, attack, p["target"], p["rate"],
                                                p.get("rate_of", "target"), p.get("targeted", True), self.cfg["seed"])
        write_poison_outputs(folder, dataset, attack_obj, m)
        return m

    def write_folder(self, folder: Path):
        """``poison.write_folder``: the poisoned copy of ``data.root`` written into ``folder`` the way
        ``poisoncam poison --write-folder`` writes it (atomic: complete or absent), or the one there when it
        was written with these settings. Every later stage reads it through ``folder/manifest.json``."""
        from solo_poisoncam.data.registry import split_folder
        from solo_poisoncam.poison import PoisonManifest
        from solo_poisoncam.poison.folder import SSL_BACKDOOR_WIDTH, write_poisoned_folder
        from solo_poisoncam.poison.triggers import trigger_spec

        p, data = self.cfg["poison"], self.cfg["data"]
        t = dict(p.get("trigger", {"kind": "htba", "seed": 10}))
        trigger = trigger_spec(t.pop("kind"), **t)
        width, quality = p.get("width", SSL_BACKDOOR_WIDTH), p.get("quality", 75)
        val_size = p.get("val_size") or data.get("size")
        src = Path(data["root"]).resolve()
        if (folder / "manifest.json").is_file():
            m = PoisonManifest.load(folder)
            w = m.written or {}
            same = (w.get("source") == str(src) and w.get("trigger_width") == width and w.get("quality") == quality
                    and (val_size is None or w.get("val_size") == val_size) and m.attack.get("trigger") == trigger
                    and m.target == p["target"] and m.rate == p["rate"] and m.seed == self.cfg["seed"]
                    and m.dataset.get("size") == data.get("size"))
            check(same, f"'{folder}' holds a poisoning with other settings; use another --out")
            return m
        try:  # the backdoor check and the evaluation read the held-out split: refused now, not after training
            split_folder(src, "test")
        except PoisonCamError as e:
            raise PoisonCamError(f"{e} (the run's backdoor check and evaluation read it)") from None
        return write_poisoned_folder(str(src), str(folder), trigger, p["target"], p["rate"], self.cfg["seed"],
                                     width=width, quality=quality, size=data.get("size"), val_size=val_size)

    def threat(self):
        from solo_poisoncam.ssl import pretrain

        return pretrain(model_pretrain_cfg(self.cfg, self.out, "undefended", self.out / "threat", progress=self.progress))

    def backdoor(self, ckpt):
        from solo_poisoncam.engine.runner import Runner
        from solo_poisoncam.eval.backdoor import backdoor_report
        from solo_poisoncam.models.threat_model import load_threat_model
        from solo_poisoncam.poison import PoisonedDataset, PoisonManifest

        poisoned = PoisonedDataset.from_manifest(PoisonManifest.load(self.out / "poison"))
        return backdoor_report(ckpt, load_threat_model(ckpt), poisoned, Runner(progress=False),
                               val_images=self.cfg["eval"].get("val_images"), seed=self.cfg["seed"])

    def detect_config(self, method: str):
        """The run's detector settings for ``method`` (defaults resolved), seeded by the run seed."""
        from solo_poisoncam.detect.config import DetectConfig

        return DetectConfig.from_dict({**self.cfg["detect"].get("settings", {}), "method": method,
                                       "seed": self.cfg["seed"]})

    def detect(self, method: str, ckpt):
        from solo_poisoncam.detect.pipeline import STAGE_VERSION
        from solo_poisoncam.engine.cache import StageCache
        from solo_poisoncam.engine.runner import Runner
        from solo_poisoncam.models.threat_model import load_threat_model
        from solo_poisoncam.pipeline.detection import detect_to_folder
        from solo_poisoncam.poison import PoisonedDataset, PoisonManifest

        folder = self.out / f"detect-{method}"
        dcfg = self.detect_config(method)
        # the resolved settings (defaults included) and the stage version: a changed default reruns
        key = {"ckpt": hash_file(ckpt), "settings": dcfg.to_dict(), "v": STAGE_VERSION}
        if _finished(folder / "metrics.json", key):
            return read_json(folder / "metrics.json")
        m = PoisonManifest.load(self.out / "poison")
        data = PoisonedDataset.from_manifest(m)
        detect_to_folder(load_threat_model(ckpt), data, dcfg, folder, Runner(progress=self.progress),
                         StageCache(self.out / "cache"), m, extra={"key": key, "checkpoint": str(ckpt)})
        return read_json(folder / "metrics.json")

    def retrain(self, method: str):
        from solo_poisoncam.io import read_indexes
        from solo_poisoncam.ssl import pretrain

        keep = read_indexes(self.out / f"detect-{method}" / "kept.txt")
        # one folder per kept set: a detector that now keeps other images trains anew beside the model
        # retrained on its former kept set, instead of being refused by it
        folder = self.out / f"retrain-{method}-{hash_obj(keep)[:8]}"
        return pretrain(model_pretrain_cfg(self.cfg, self.out, method, folder, keep=keep, progress=self.progress))

    def clean(self):
        from solo_poisoncam.ssl import pretrain

        return pretrain(model_pretrain_cfg(self.cfg, self.out, "clean-data", self.out / "clean", progress=self.progress))

    def evaluate(self, name: str, ckpt):
        folder = self.out / f"eval-{name}"
        e = self.cfg["eval"]
        # v2: the control patch's ASR beside the trigger's
        key = {"ckpt": hash_file(ckpt), "eval": e, "seed": self.cfg["seed"], "v": 2}
        if _finished(folder / "metrics.json", key):
            return read_json(folder / "metrics.json")
        res = evaluate_checkpoint(self.cfg, self.out, ckpt)
        res.update({"key": key, "checkpoint": str(ckpt)})
        write_json(folder / "metrics.json", res)
        return res

    # -- the chain ------------------------------------------------------------------------------
    def run(self) -> Dict[str, Any]:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        run_file = self.out / "run.json"
        if run_file.is_file():
            old = read_json(run_file)
            check(hash_obj(_identity(old.get("config"))) == hash_obj(_identity(cfg)),
                  f"'{self.out}' holds a run with other settings; use another --out or delete it")
        write_json(run_file, {"config": cfg})
        manifest = self.stage("poison", self.poison)
        self.log(f"  {manifest.summary()}")
        ckpt = self.stage("threat model", self.threat)
        bd = self.stage("backdoor check", lambda: self.backdoor(ckpt))
        self.log(f"  backdoor {describe_outcome(bd)} (threat margins {bd['margins']}, "
                 f"random-init reference {bd['reference_margins']})")
        models = {"undefended": str(ckpt)}
        detections = {}
        for method in cfg["detect"]["methods"]:
            detections[method] = self.stage(f"detect {method}", lambda m=method: self.detect(m, ckpt))
            if cfg["retrain"].get("enabled", True):
                models[method] = str(self.stage(f"retrain on {method}-kept", lambda m=method: self.retrain(m)))
        if cfg["reference"].get("clean", True):
            models["clean-data"] = str(self.stage("clean-data reference", self.clean))
        evals = {name: self.stage(f"evaluate {name}", lambda n=name, c=c: self.evaluate(n, c))
                 for name, c in models.items()}
        self.results.update({"manifest": manifest.to_dict() | {"poisons": None}, "backdoor": bd,
                             "detections": detections, "models": models, "evaluations": evals,
                             "timings": self.timings})
        if "clean-data" in evals:
            beyond = targeted_beyond_clean(evals["undefended"], evals["clean-data"])
            if beyond is not None:
                self.results["targeted_beyond_clean"] = beyond
                self.log(f"  targeted beyond the clean-data model: "
                         f"{'yes (' + ', '.join(beyond['targeted_at']) + ')' if beyond['targeted'] else 'no'} "
                         f"(probe-ASR margins {beyond['margin_threat']:.1%} vs {beyond['margin_clean']:.1%})")
        write_json(self.out / "results.json", self.results)
        from solo_poisoncam.report import write_report

        self.stage("report", lambda: write_report(self.results, self.out))
        return self.results


def _identity(cfg: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The settings that define a run's results: not the logging switches, nor the switches that only add
    or skip stages (retraining, the clean-data reference), nor the evaluation's settings: those stages
    have keys of their own (an evaluation: checkpoint bytes, ``eval`` and seed), so a finished run can be
    evaluated again with other label budgets or draws."""
    if cfg is None:
        return None
    out = {**cfg, "pretrain": {k: v for k, v in cfg.get("pretrain", {}).items() if k != "wandb"}}
    out.pop("eval", None)
    out["retrain"] = {k: v for k, v in cfg.get("retrain", {}).items() if k != "enabled"}
    out["reference"] = {k: v for k, v in cfg.get("reference", {}).items() if k != "clean"}
    return out


def run_chain(cfg: Dict[str, Any], out, progress: bool = True, log: Optional[Callable[[str], None]] = None):
    return Chain(cfg, Path(out), progress, log or print).run()
