"""The planner's pure core: workload estimate, configuration columns, the MILP, placement of plans, the
planning round (round.py), configuration specs (configs.py) and the drain rule (drain.py)."""
