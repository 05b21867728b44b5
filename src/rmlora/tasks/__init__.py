"""The workloads' data, models and settings (face, speaker, style); the scenario runner
finds them through :func:`rmlora.scenario.get_workload`."""
