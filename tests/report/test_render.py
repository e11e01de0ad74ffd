"""The report's Markdown and HTML: every table has a header that names its columns."""

import re

import numpy as np

from solo_poisoncam.poison.manifest import PoisonManifest
from solo_poisoncam.report.render import write_report


def _section(md: str, title: str) -> str:
    return md.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def test_settings_table_has_a_header_row_that_names_its_columns(tmp_path):
    PoisonManifest(dataset={"name": "fashion-mnist", "split": "train"}, fingerprint="f", num_samples=10,
                   attack={"name": "patch", "size": 4}, target=0, target_name="T-shirt/top", rate=0.5,
                   rate_of="target", targeted=True, seed=0, indexes=np.array([1, 2]),
                   boxes=np.array([[0, 0, 4, 4], [2, 2, 6, 6]]),
                   image_sizes=np.array([[32, 32], [32, 32]])).save(tmp_path / "poison" / "manifest.json")
    side = {"patched_to_poison_cluster": 0.9, "control_to_poison_cluster": 0.1}
    results = {"config": {"name": "tiny", "seed": 0, "data": {"dataset": "fashion-mnist"},
                          "pretrain": {"method": "byol", "backbone": "cnn_small", "epochs": 1, "batch_size": 8},
                          "detect": {"methods": ["poisoncam"], "settings": {}}},
               "backdoor": {"learned": True, "criteria": {"cluster": True}, "targeted": False,
                            "threat": side, "reference": side, "rule": "r"},
               "detections": {}, "evaluations": {}, "timings": {}}
    paths = write_report(results, tmp_path)
    settings = _section(paths["md"].read_text(), "Settings").strip().splitlines()
    assert settings[0] == "| setting | value |", settings[0]
    assert settings[2].startswith("| data | fashion-mnist, 10 training images")
    page = paths["html"].read_text()
    first = re.search(r"<h2>Settings</h2>\s*<table><thead><tr>(.*?)</tr></thead>", page).group(1)
    assert first == "<th>setting</th><th>value</th>"


def _beyond(targeted):
    return {"targeted": targeted, "targeted_at": ["every label"] if targeted else [], "margin_threat": 0.5,
            "margin_clean": 0.0 if targeted else 0.4, "label_fraction": 1.0, "rule": "r"}


def test_the_console_says_in_one_line_when_the_attack_did_not_take_downstream():
    from solo_poisoncam.report.render import console_summary

    side = {"patched_to_poison_cluster": 0.9, "control_to_poison_cluster": 0.1}
    base = {"backdoor": {"learned": True, "criteria": {"cluster": True}, "targeted": False, "threat": side,
                         "reference": side}, "detections": {}, "evaluations": {}}
    line = "The attack did not take downstream:"
    missed = console_summary({**base, "targeted_beyond_clean": _beyond(False)}).splitlines()
    assert sum(x.startswith(line) for x in missed) == 1 and missed[-1].startswith(line)
    assert line not in console_summary({**base, "targeted_beyond_clean": _beyond(True)})
    assert line not in console_summary(base)  # no clean-data model: nothing to judge it by
