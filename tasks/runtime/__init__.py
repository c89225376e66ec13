"""The Prefect environment, run lock, GPU limit, faults, records and artifacts (see ``tasks``)."""
