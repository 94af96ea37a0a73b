"""Launching runs through submitit: cluster profiles, the resumable job, submission and job status."""


