"""The report's detection table: the verdict cell names both "learned" tests and what was removed."""

from solo_poisoncam.report.tables import detection_table


def _doc(verdict, removed):
    return {"metrics": {"verdict": verdict, "num_removed": removed, "num_samples": 100, "precision": 1.0,
                        "recall": 0.5, "localisation_all": {"trigger_detection_accuracy": 0.25}},
            "timings": {"total_s": 12.4}}


def test_verdict_cell_names_coherence_and_flip_tests():
    found = {"found": True, "repeated": 7, "coherence": 0.868, "coherence_threshold": 0.896,
             "flip": 0.61, "flip_threshold": 0.151}
    none = {"found": False, "repeated": 0, "coherence": 0.1, "coherence_threshold": 0.5, "removal_skipped": True}
    head, rows = detection_table({"poisoncam": _doc(found, 40), "clean-run": _doc(none, 0),
                                  "patchsearch": _doc(None, 9)})
    cell = dict(zip(head, rows[0]))
    assert cell["verdict (label-free)"] == ("backdoor found (7 repeating windows, coherence 0.868 vs 0.896, "
                                            "in-place flip rate 0.610 vs 0.151)")
    assert cell["removed"] == "40/100" and cell["precision"] == "1.000" and cell["trigger det. acc"] == "0.250"
    assert cell["time (s)"] == "12"
    # no flip statistic recorded (verdicts of before the in-place test): the cell does not invent one
    assert dict(zip(head, rows[1]))["verdict (label-free)"] == ("no backdoor found (0 repeating windows, "
                                                                "coherence 0.100 vs 0.500), nothing removed")
    assert dict(zip(head, rows[2]))["verdict (label-free)"] == "n/a (PatchSearch has none)"


def test_downstream_table_shows_the_control_asr_and_na_for_evaluations_without_it():
    from solo_poisoncam.report.tables import downstream_table

    lin = {"clean_acc1": 0.36, "patched_acc1": 0.221, "asr": 0.195, "fp": 179, "asr_control": 0.091}
    old = {k: v for k, v in lin.items() if k != "asr_control"}  # measured before the control column existed
    ev = lambda linear: {"budgets": {"0.1": {"linear": linear, "knn": {"clean_acc1": 0.3, "asr": 0.1}}}}  # noqa: E731
    head, rows = downstream_table({"poisoncam": ev(lin), "undefended": ev(old)})
    new, before = dict(zip(head, rows[0])), dict(zip(head, rows[1]))
    assert (new["ASR"], new["control ASR"], new["FP"], new["labels"]) == ("19.5%", "9.1%", "179", "10%")
    assert before["control ASR"] == "n/a" and before["ASR"] == "19.5%"
