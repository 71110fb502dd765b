"""Placement simulation (no processes): balance and movement of the 256-shard map.

    python bench/placement_sim.py [--sizes 3,4,5,7,10,16,25,50,100] [--samples 8]

For each cluster size N it places the 256 shards on nodes ``tmnd-node1..N`` with the rule of
``tokmesh/cluster/placement.py`` and prints a Markdown table:

* min / max / mean shards owned per node;
* the fraction of shards whose owner changes when one node joins (averaged over
  ``--samples`` different joining node ids), against the ideal ``1/(N+1)``;
* the fraction that changes when one node leaves (averaged over up to ``--samples`` of the
  N nodes, evenly spread), against the ideal ``1/N``;
* for comparison, the min / max of plain ring placement (owner = first virtual node after
  the shard's position, no load bound).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tokmesh.cluster.placement import SHARDS, Placement, Ring, place, shard_position


def moved(before: Placement, after: Placement) -> float:
    """Fraction of shards whose owner differs between two maps."""
    return sum(a != b for a, b in zip(before.owners, after.owners, strict=True)) / SHARDS


def plain_ring_counts(nodes: list[str]) -> list[int]:
    """Shards per node under plain consistent hashing (no load bound), for comparison."""
    ring = Ring.of(nodes)
    owners = Counter(ring.lookup(shard_position(s)) for s in range(SHARDS))
    return [owners.get(n, 0) for n in nodes]


def row(n: int, samples: int) -> str:
    """One table row for a cluster of ``n`` nodes."""
    nodes = [f"tmnd-node{i}" for i in range(1, n + 1)]
    base = place(nodes)
    counts = [base.counts().get(node, 0) for node in nodes]
    joins = [moved(base, place([*nodes, f"tmnd-join{j}"])) for j in range(1, samples + 1)]
    step = max(1, n // samples)
    leavers = nodes[::step][:samples]
    leaves = [moved(base, place([x for x in nodes if x != gone])) for gone in leavers]
    plain = plain_ring_counts(nodes)
    return (
        f"| {n} | {min(counts)} | {max(counts)} | {statistics.mean(counts):.1f} "
        f"| {statistics.mean(joins):.3f} | {1 / (n + 1):.3f} "
        f"| {statistics.mean(leaves):.3f} | {1 / n:.3f} "
        f"| {min(plain)}–{max(plain)} |"
    )


def main() -> None:
    """Print the table for the requested sizes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="3,4,5,7,10,16,25,50,100")
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args()
    print(
        "| nodes | min | max | mean | moved on join | ideal 1/(N+1) "
        "| moved on leave | ideal 1/N | plain ring min–max |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in (int(x) for x in args.sizes.split(",")):
        print(row(n, args.samples), flush=True)


if __name__ == "__main__":
    main()
