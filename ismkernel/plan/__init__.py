"""The planner: affected intervals, needed rows, strategies and FLOPs."""

from ismkernel.plan.edits import Edits
from ismkernel.plan.planner import NodePlan, Plan, build_plan, concrete_shapes

__all__ = ["Edits", "NodePlan", "Plan", "build_plan", "concrete_shapes"]
