"""Sharded stages: jobs, steps, mapping, dispatch, model cache, shared storage, result store (see ``tasks``)."""
