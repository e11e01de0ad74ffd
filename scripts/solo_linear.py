#!/usr/bin/env python
"""solo-learn's main_linear.py with solo-poisoncam registered (same as ``poisoncam-solo-linear``)."""

from solo_poisoncam.solo_adapter.linear import main

if __name__ == "__main__":
    main()
