"""The planner: affected intervals, needed rows, strategies and FLOPs."""

from ismkernel.plan.planner import NodePlan, Plan, build_plan, concrete_shapes

__all__ = ["NodePlan", "Plan", "build_plan", "concrete_shapes"]
