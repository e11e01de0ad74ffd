"""``poisoncam-solo-pretrain`` / ``python -m solo_poisoncam.solo_adapter.pretrain``: solo-learn's
``main_pretrain.py`` with solo-poisoncam registered; takes exactly its arguments, e.g.

    poisoncam-solo-pretrain --config-path zoo_configs/pretrain/fashion-mnist --config-name byol.yaml \\
        +poison=patch poison.rate=0.5 +detect=poisoncam
"""

from solo_poisoncam.solo_adapter.scripts import run_solo_script


def main() -> None:
    run_solo_script("main_pretrain.py")


if __name__ == "__main__":
    main()
