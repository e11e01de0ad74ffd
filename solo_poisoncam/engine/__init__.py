"""Shared machinery below clustering, detection and evaluation: the device/process-group runner,
the keyed stage cache and streamed feature extraction."""
