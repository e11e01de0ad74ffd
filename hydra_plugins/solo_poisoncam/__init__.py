"""Hydra plugin of solo-poisoncam: adds ``pkg://solo_poisoncam.conf`` to every Hydra app's config
search path, so solo-learn commands accept ``+poison=patch``, ``+detect=poisoncam`` and
``+method_kwargs=cluster_head``.

Hydra imports every module of the ``hydra_plugins`` namespace at start-up, in every Hydra app of
the environment: keep this module (and ``solo_main``) free of heavy imports.
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class SoloPoisonCamSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="solo-poisoncam", path="pkg://solo_poisoncam.conf")
