"""Copies the finished stages of a run folder, without their tensors, into the repository, so
that a grid that takes several sittings on several machines loses no finished result.

    python3 scripts/sweep_snapshot.py RUNS/<pipeline> results/<name>/runs/<slice>

A stage is finished when its stage.json is there (a stage is committed whole). Each finished stage folder of the run's cells is copied with
the files `petnas report` and `petnas compare` read (stage.json, metrics.json) and the
architectures found (architecture.json, heatmap.svg), never outputs; with a run.json listing
the copied stages, so that both commands read the copy like the run folder. A later sitting runs
the other cells (`petnas run --only ...`) and `report` reads all the copies together.
"""
import json
import shutil
import sys
from pathlib import Path

# What `report` and `compare` read (metrics, the stage's seed and time) and what the results
# file cites (the architectures found); outputs and tensors stay behind.
KEEP = {"stage.json", "metrics.json", "architecture.json", "heatmap.svg"}


def stages_per_cell(run_dir: Path) -> dict:
    """The stages of each cell, from resolved.yaml's JSON-compatible YAML (petnas writes it)."""
    import re
    text = (run_dir / "resolved.yaml").read_text()
    cells, current = {}, None
    for line in text.splitlines():
        if line.startswith("- cell: "):
            current = line[len("- cell: "):].strip().strip("'\"")
            cells[current] = []
        elif current is not None and re.match(r"^    [A-Za-z0-9_.-]+:$", line):
            cells[current].append(line.strip()[:-1])
    return cells


def main() -> int:
    run_dir, dest = Path(sys.argv[1]), Path(sys.argv[2])
    cells = stages_per_cell(run_dir)
    finished = {c: [s for s in stages if (run_dir / c / s / "stage.json").exists()] for c, stages in cells.items()}
    finished = {c: stages for c, stages in finished.items() if stages}
    target = dest / run_dir.name
    target.mkdir(parents=True, exist_ok=True)
    for cell, stages in finished.items():
        for stage in stages:
            src = run_dir / cell / stage
            out = target / cell / stage
            out.mkdir(parents=True, exist_ok=True)
            for f in src.iterdir():
                if f.is_file() and f.name in KEEP:
                    shutil.copy2(f, out / f.name)
    record = json.loads((run_dir / "run.json").read_text())
    record["stages"] = [{"cell": c, "stage": s} for c, stages in finished.items() for s in stages]
    record["status"] = "partial" if any(len(finished.get(c, [])) < len(cells[c]) for c in cells) else record.get("status")
    (target / "run.json").write_text(json.dumps(record, indent=1))
    complete = [c for c in cells if len(finished.get(c, [])) == len(cells[c])]
    print(f"{sum(map(len, finished.values()))} finished stage(s) copied to {target}; {len(complete)} of {len(cells)} cells complete")
    # resolved.yaml is the latest run's: a later `--only` selection replaces the earlier one's
    # cells, whose stage lists are then unknown here. Snapshot before starting another selection.
    unlisted = sorted(p.name for p in run_dir.iterdir() if p.is_dir() and p.name not in cells)
    for c in unlisted:
        print(f"not copied (not in the latest run's resolved.yaml): {c}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
