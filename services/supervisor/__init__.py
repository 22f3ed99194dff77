"""The node supervisor: runs this node's workers and follows the planner's plans."""
