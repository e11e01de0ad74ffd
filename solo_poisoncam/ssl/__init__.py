"""The built-in SSL backend (used when solo-learn is absent): SimCLR, BYOL, SimSiam on Lightning."""

from solo_poisoncam.ssl import byol, simclr, simsiam  # noqa: F401  (register the methods)
from solo_poisoncam.ssl.base import SSL_METHODS, SSLMethod
from solo_poisoncam.ssl.train import PretrainConfig, pretrain

__all__ = ["SSL_METHODS", "SSLMethod", "PretrainConfig", "pretrain"]
