"""Hydra config groups shipped with the package (``pkg://solo_poisoncam.conf``), e.g. the solo-learn
flags ``+poison=patch``, ``+detect=poisoncam`` and ``+method_kwargs=cluster_head``."""
