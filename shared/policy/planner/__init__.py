"""The planner's pure core: workload estimate, configuration columns, the MILP, placement of plans."""
