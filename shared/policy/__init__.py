"""Pure scheduling policy: cost model, step predictor, threshold choice, load control, scheduling core.

Everything here takes plain data and ``now_s`` and returns plain data; nothing reads the clock, does
I/O or logs metrics. The live services and the simulator (``shared.sim``) drive the same objects.
Import submodules directly (``from shared.policy.scheduling import SchedulerCore``).
"""
