"""Workloads: data, model and defaults of each scenario."""

from rmlora.tasks.face import FaceTask
from rmlora.tasks.speaker import SpeakerTask

TASKS = {"face": FaceTask, "speaker": SpeakerTask}

__all__ = ["TASKS", "FaceTask", "SpeakerTask"]
