#!/usr/bin/env python
"""solo-learn's main_pretrain.py with solo-poisoncam registered (same as ``poisoncam-solo-pretrain``)."""

from solo_poisoncam.solo_adapter.pretrain import main

if __name__ == "__main__":
    main()
