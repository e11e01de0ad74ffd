"""Option B: no wrapper. When the running program is solo-learn's ``main_pretrain.py`` or
``main_linear.py`` (which has
already imported ``solo``), register solo-poisoncam and rebind the names that script imported
before Hydra started, so that the unmodified ``python main_pretrain.py ... +poison=patch`` works.

Hydra imports this module (through its plugin scan) in every Hydra app, before composing the
config and before the task function runs; anywhere else the guard costs a dict lookup.
"""

import sys

_main = sys.modules.get("__main__")
if (
    _main is not None
    and str(getattr(_main, "__file__", "") or "").endswith(("main_pretrain.py", "main_linear.py"))
    and "solo" in sys.modules
):
    import warnings

    from solo_poisoncam.solo_adapter import register

    # Hydra reports any warning raised while it imports a plugin as the plugin's fault
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        register(main_globals=_main.__dict__)
