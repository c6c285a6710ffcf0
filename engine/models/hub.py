"""A Hugging Face Hub name (ORG/NAME, or ORG/NAME@REVISION) as a local checkpoint directory, through
huggingface_hub: its cache first, then (unless HF_HUB_OFFLINE is set) a download of the config,
tokenizer and *.safetensors files only. Pickled weights (*.bin, *.pt) are never fetched nor loaded.
"""

from __future__ import annotations

from pathlib import Path

from .checkpoint import CheckpointError

ALLOW = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"]


def hub_checkpoint(model: str) -> Path:
    import huggingface_hub
    from huggingface_hub import constants, snapshot_download

    repo, _, revision = model.partition("@")
    cache = constants.HF_HUB_CACHE
    try:
        folder = snapshot_download(repo, revision=revision or None, allow_patterns=ALLOW, local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError), or a cache entry without this revision
        if constants.HF_HUB_OFFLINE:
            raise CheckpointError(f"{model}: not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set; "
                                  f"download it with network first, or give a local directory") from None
        try:
            folder = snapshot_download(repo, revision=revision or None, allow_patterns=ALLOW)
        except Exception as exc:  # network errors, a missing repository or revision, a gated model
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{model}: not in the Hugging Face cache ({cache}) and it cannot be downloaded "
                                  f"({reason[:160]})") from None
    path = Path(folder)
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
        what = f"only pickled weights ({', '.join(pickles[:3])}), which cbtui refuses to load" if pickles else \
            "no *.safetensors weights"
        raise CheckpointError(f"{model}: the snapshot {path} has {what}; use a safetensors revision")
    del huggingface_hub
    return path
