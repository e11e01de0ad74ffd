"""Not implemented yet."""

from solo_poisoncam.checks import PoisonCamError


def add_arguments(p):
    pass


def run(args):
    raise PoisonCamError("'poisoncam demo' is not implemented yet")
