"""Runs a command and prints its peak memory: `python3 scripts/bench/peak_memory.py CMD ARGS...`
prints its stdout, then `peak RSS MiB` and, on CUDA, `peak GPU MiB` (the benchmark's way of
measuring them, scripts/bench/lora_vs_peft.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lora_vs_peft import CUDA, peak_memory  # noqa: E402

stdout, rss, gpu = peak_memory(sys.argv[1:])
print(stdout, end="")
print(f"peak RSS MiB {rss:.0f}" + (f" · peak GPU MiB {gpu:.0f}" if CUDA else ""))
