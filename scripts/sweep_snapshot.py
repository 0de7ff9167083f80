"""Copies the finished cells of a run folder, without their tensors, into the repository, so
that a grid that takes several sittings on several machines loses no finished cell.

    python3 scripts/sweep_snapshot.py RUNS/<pipeline> results/<name>/runs/<slice>

A cell is finished when every stage the run's resolved.yaml gives it has completed. Each of its stage folders is copied with
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
    finished = [c for c, stages in cells.items()
                if stages and all((run_dir / c / s / "stage.json").exists() for s in stages)]
    target = dest / run_dir.name
    target.mkdir(parents=True, exist_ok=True)
    for cell in finished:
        for stage in cells[cell]:
            src = run_dir / cell / stage
            out = target / cell / stage
            out.mkdir(parents=True, exist_ok=True)
            for f in src.iterdir():
                if f.is_file() and f.name in KEEP:
                    shutil.copy2(f, out / f.name)
    record = json.loads((run_dir / "run.json").read_text())
    record["stages"] = [s for s in record.get("stages", []) if s.get("cell") in finished]
    if not record["stages"]:
        # A run still in progress lists no stages yet: list those of the finished cells.
        record["stages"] = [{"cell": c, "stage": s} for c in finished for s in cells[c]]
        record["status"] = "partial"
    (target / "run.json").write_text(json.dumps(record, indent=1))
    print(f"{len(finished)} finished cell(s) of {len(cells)} copied to {target}")
    for c in finished:
        print(f"  {c}")
    # resolved.yaml is the latest run's: a later `--only` selection replaces the earlier one's
    # cells, whose stage lists are then unknown here. Snapshot before starting another selection.
    unlisted = sorted(p.name for p in run_dir.iterdir() if p.is_dir() and p.name not in cells)
    for c in unlisted:
        print(f"not copied (not in the latest run's resolved.yaml): {c}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
