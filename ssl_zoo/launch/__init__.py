"""Launching runs through submitit: cluster profiles, the resumable job, submission and job status."""


class JobError(RuntimeError):
    """A job id or run directory that names no submitted job, or a scheduler that refused a request."""
