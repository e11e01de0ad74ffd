"""``poisoncam-solo-linear`` / ``python -m solo_poisoncam.solo_adapter.linear``: solo-learn's
``main_linear.py`` with solo-poisoncam registered (it needs no method registry, but checkpoints of
``cluster_head`` runs load like any other); takes exactly its arguments."""

from solo_poisoncam.solo_adapter.scripts import run_solo_script


def main() -> None:
    run_solo_script("main_linear.py")


if __name__ == "__main__":
    main()
