"""Workloads: data, model and defaults of each scenario."""

from rmlora.tasks.face import FaceTask

TASKS = {"face": FaceTask}

__all__ = ["TASKS", "FaceTask"]
