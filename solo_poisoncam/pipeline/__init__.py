"""The one-command chain (``poisoncam run`` / ``poisoncam demo``)."""
