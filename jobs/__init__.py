"""Scheduling only: each job finds what is due and enqueues it; services do the work."""
