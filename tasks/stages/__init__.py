"""The pipeline's stage tasks and the run-level chores around them (see ``tasks``)."""
