"""The Ray engine's actor pool: how many tagging actors fit a cluster (every node keeps a CPU for Ray Data's other
tasks), and on which node each one starts."""

from __future__ import annotations

import math

from flaxner.tagging.reading import MAX_PARTS


def choose_pool(actors: int | None = None, cpus_per_actor: float | None = None,
                gpus_per_actor: float | None = None) -> dict:
    """The actor pool for the cluster Ray is connected to: {"actors", "num_cpus", "num_gpus", "mem_fraction",
    "slots" (a node id per actor, nodes interleaved), "nodes", "cpus", "gpus"}. GPU: one actor per `gpus_per_actor`
    (default 1) of GPU. CPU: every node keeps a CPU free of actors; an explicit request that would not is refused,
    the default is fitted."""
    import ray

    nodes = [(n["NodeID"], n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    node_cpus = [r.get("CPU", 0.0) for _, r in nodes]
    node_gpus = [r.get("GPU", 0.0) for _, r in nodes]
    pool = {"nodes": len(nodes), "cpus": sum(node_cpus), "gpus": sum(node_gpus), "mem_fraction": None}
    if actors is not None and not 1 <= actors <= MAX_PARTS:
        raise ValueError(f"--actors {actors}: must be in [1, {MAX_PARTS}]")
    if gpus_per_actor is None and cpus_per_actor is None and pool["gpus"] > 0:
        gpus_per_actor = 1.0
    if gpus_per_actor is not None:
        if gpus_per_actor <= 0:
            raise ValueError(f"--gpus-per-actor {gpus_per_actor}: must be positive")
        c = cpus_per_actor or 1.0
        per_node = [min(math.floor(g / gpus_per_actor + 1e-9), math.floor(cpu / c + 1e-9))
                    for g, cpu in zip(node_gpus, node_cpus, strict=True)]
        what = f"{gpus_per_actor:g} GPU"
        per_gpu = max(1, round(1 / gpus_per_actor))
        if per_gpu > 1:
            from flaxner.tagging.processes import child_env

            pool["mem_fraction"] = child_env(per_gpu)["XLA_PYTHON_CLIENT_MEM_FRACTION"]
        pool.update(num_gpus=gpus_per_actor, num_cpus=c)
    else:
        c = cpus_per_actor or 1.0
        # one CPU per node left to the dataset's other tasks (ray-project/ray#44687)
        per_node = [math.floor(max(cpu - 1, 0) / c + 1e-9) for cpu in node_cpus]
        if actors is None and cpus_per_actor is None and not any(per_node) and max(node_cpus, default=0) > 0:
            c = max(node_cpus) / 2  # one-CPU nodes only: one actor asking half a CPU leaves the rest free
            per_node = [int(cpu == max(node_cpus)) for cpu in node_cpus]
        what = f"{c:g} CPU"
        pool.update(num_gpus=0.0, num_cpus=c)
    fit = sum(per_node)
    n = actors or fit
    if fit == 0 or n > fit:
        raise ValueError(f"{n} actors × {what} do not fit the cluster while leaving each node a CPU for other tasks "
                         f"(nodes: {', '.join(f'{x:g}' for x in node_cpus)} CPUs, "
                         f"{', '.join(f'{x:g}' for x in node_gpus)} GPUs: at most {fit} actors; "
                         f"ray-project/ray#44687); lower --actors, --cpus-per-actor or --gpus-per-actor")
    slots = [node for r in range(max(per_node)) for (node, _), k in zip(nodes, per_node, strict=True) if r < k]
    pool.update(actors=n, slots=slots[:n])
    return pool


class Placement:
    """`ray_remote_args_fn` of the actor pool: each new actor on the next slot's node (soft, so a restart after the
    node is lost goes elsewhere). Ray Data's SPREAD alone can put two actors on one node and leave it no CPU."""

    def __init__(self, slots: list[str]):
        self.slots, self.next = slots, 0

    def __call__(self) -> dict:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        node = self.slots[self.next % len(self.slots)]
        self.next += 1
        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=True)}
