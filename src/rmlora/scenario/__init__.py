"""The scenario layer: one runner over the registered workloads, typed results, the report."""

from rmlora.scenario.results import (PAPER_RATIOS, SCHEMA_VERSION, PathResult, PathStep, RequestResult,
                                     ScenarioResult, SeedResult)
from rmlora.scenario.runner import Plan, plan_scenario, run_scenario
from rmlora.scenario.workload import (ClassState, Evaluation, Extension, Objective, Workload, WorkloadSettings,
                                      get_workload, workload_names)

__all__ = ["PAPER_RATIOS", "SCHEMA_VERSION", "ClassState", "Evaluation", "Extension", "Objective", "PathResult",
           "PathStep", "Plan", "RequestResult", "ScenarioResult", "SeedResult", "Workload", "WorkloadSettings",
           "get_workload", "plan_scenario", "run_scenario", "workload_names"]
