"""Content-addressed stage outputs and their cache keys (see ``tasks``)."""
