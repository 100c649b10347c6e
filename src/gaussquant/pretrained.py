"""Tokenizer folders and the Hugging Face Hub: ``save_pretrained``, ``push_to_hub``, loading back.

A folder holds ``model.safetensors`` (the weights: tensors only, no pickle), ``config.json``
(everything else a checkpoint records: method, arch, rate, step, the resolved config, the
quantizer's definition with its codebook sha256, the evaluation metrics) and ``README.md``, a
model card with the evaluation table. Loading reads the JSON and the tensors and rebuilds the
model as :func:`gaussquant.checkpoint.autoencoder_from_payload` does for a checkpoint file.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from gaussquant.errors import GaussquantError

PRETRAINED_FORMAT = "gaussquant-tokenizer/1"
CONFIG_FILE, WEIGHTS_FILE, CARD_FILE = "config.json", "model.safetensors", "README.md"
FILES = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE)


# ----------------------------------------------------------------------------- writing
def save_pretrained(tokenizer, folder: str | Path, metrics: dict | str | Path | None) -> Path:
    from safetensors.torch import save

    from gaussquant.io import atomic_path, write_json, write_text

    info = tokenizer.info
    if "config" not in info:
        raise GaussquantError(
            "save_pretrained: this tokenizer wraps a module of your own, which cannot be rebuilt "
            "from a folder; save that module, and GQ's (codebook_size, dim, seed, beta)"
        )
    folder = Path(folder)
    record = _metrics(metrics) if metrics is not None else info.get("metrics")
    config = {"format": PRETRAINED_FORMAT} | {k: v for k, v in info.items() if k != "format"}
    config["metrics"] = record
    state = {
        k: v.detach().cpu().clone().contiguous() for k, v in tokenizer.model.state_dict().items()
    }
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        tmp.write_bytes(save(state, metadata={"format": PRETRAINED_FORMAT}))
    write_json(folder / CONFIG_FILE, config)
    write_text(folder / CARD_FILE, model_card(config))
    return folder


def push_to_hub(tokenizer, repo_id, metrics, private, token, commit_message) -> str:
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(tokenizer, tmp, metrics)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            info = api.upload_folder(
                repo_id=repo_id, folder_path=tmp, commit_message=commit_message
            )
        except Exception as err:  # noqa: BLE001 - network, authentication, permissions
            raise GaussquantError(f"push_to_hub {repo_id!r}: {_first_line(err)}") from None
    return str(getattr(info, "commit_url", info))


def _metrics(metrics: dict | str | Path) -> dict:
    if isinstance(metrics, dict):
        return metrics
    path = Path(metrics)
    if not path.is_file():
        raise GaussquantError(f"metrics {str(path)!r} not found (gaussquant evaluate writes it)")
    return json.loads(path.read_text())


def model_card(config: dict[str, Any]) -> str:
    """README.md of a tokenizer folder: what it is, how to load it, its evaluation table."""
    from gaussquant import __version__

    cfg, q = config.get("config", {}), config.get("extra", {}).get("quantizer") or {}
    model = cfg.get("model", {})
    bits, f = int(config["rate"]), model.get("downsample")  # rates: bits per latent position
    lines = [
        "---",
        "library_name: gaussquant",
        "tags: [image-tokenizer, vector-quantization, gaussian-quant]",
        "---",
        f"# gaussquant tokenizer: {config['method']} ({config['arch']}, {config['rate']} bits per position)",
        "",
        f"- method `{config['method']}`"
        + (
            f" (converted from a `{q_src}` Gaussian VAE)"
            if (q_src := config.get("extra", {}).get("source_method"))
            else ""
        ),
        f"- architecture `{config['arch']}`, training step {config.get('step')}",
        f"- {bits} bits per latent position ({bits / f**2:g} bits per pixel), latent channels "
        f"{model.get('latent_channels')}, downsampling {f}",
    ]
    if q.get("kind") == "gq":
        lines.append(
            f"- GQ codebook: K = {q['codebook_size']}, m = {q['dim']}, seed {q['seed']}, "
            f"beta {q['beta']}, sha256 `{q['codebook_sha256']}` (docs/method.md §2)"
        )
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from gaussquant import load_tokenizer",
        "",
        'tok = load_tokenizer("THIS_REPO_OR_FOLDER")',
        "indices = tok.encode(images)  # images (B, 3, H, W) in [-1, 1]",
        "recon = tok.decode(indices)",
        "```",
        "",
        "## Evaluation",
        "",
    ]
    lines += metrics_table(config.get("metrics"))
    lines += ["", f"Written by gaussquant {__version__}.", ""]
    return "\n".join(lines)


def metrics_table(record: dict | None) -> list[str]:
    """Markdown table of an evaluation record's metrics (those of records.METRICS it holds)."""
    from gaussquant.records import METRICS

    if not record:
        return [
            "Not evaluated here: `gaussquant evaluate`, then `save_pretrained(..., metrics=JSON)`."
        ]
    keys = [k for k in METRICS if isinstance(record.get(k), int | float)]
    head = ["images", "resolution", "preset", "profile"]  # profile: records before presets
    where = ", ".join(f"{k} {record[k]}" for k in head if record.get(k) is not None)
    rows = [
        "| " + " | ".join(METRICS[k][0] for k in keys) + " |",
        "|" + "---|" * len(keys),
        "| " + " | ".join(f"{record[k]:.4g}" for k in keys) + " |",
    ]
    return rows + (["", f"Measured by `gaussquant evaluate` ({where})."] if where else [])


# ----------------------------------------------------------------------------- reading
def read_pretrained(folder: str | Path) -> dict[str, Any]:
    """A tokenizer folder's contents as a checkpoint payload (weights under ``"model"``)."""
    from safetensors.torch import load_file

    from gaussquant.config import migrate_saved_config

    folder = Path(folder)
    config_path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file() or not weights.is_file():
        raise GaussquantError(
            f"{folder}: not a gaussquant tokenizer folder (needs {CONFIG_FILE} and {WEIGHTS_FILE}; "
            "Tokenizer.save_pretrained writes them)"
        )
    try:
        payload = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise GaussquantError(f"{config_path}: not valid JSON ({err})") from None
    if not isinstance(payload, dict) or payload.get("format") != PRETRAINED_FORMAT:
        raise GaussquantError(f"{config_path}: not a gaussquant tokenizer ({PRETRAINED_FORMAT})")
    try:
        payload["model"] = load_file(str(weights))
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file
        raise GaussquantError(
            f"{weights}: cannot be read as safetensors ({_first_line(err)})"
        ) from None
    payload["config"] = migrate_saved_config(payload["config"])
    return payload


def download(
    repo_id: str, revision: str | None, cache_dir: str | Path | None, local_files_only: bool
) -> Path:
    """The folder of Hub model ``repo_id`` in the Hugging Face cache (downloaded when missing;
    offline with ``HF_HUB_OFFLINE=1`` or ``local_files_only``)."""
    from huggingface_hub import snapshot_download

    if repo_id.count("/") != 1 or repo_id.startswith((".", "/")):
        raise GaussquantError(
            f"{repo_id!r}: no such file or folder, and not a Hub id of the form owner/name"
        )
    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
                allow_patterns=list(FILES),
                library_name="gaussquant",
            )
        )
    except Exception as err:  # noqa: BLE001 - network, missing repo, offline cache miss
        raise GaussquantError(f"Hub model {repo_id!r}: {_first_line(err)}") from None


def hub_file(repo_id: str, filename: str, revision: str | None = None) -> Path:
    """One file of a Hub repository (e.g. a released official checkpoint), cached."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(
            hf_hub_download(repo_id, filename, revision=revision, library_name="gaussquant")
        )
    except Exception as err:  # noqa: BLE001 - network, missing repo or file, offline cache miss
        raise GaussquantError(f"Hub file {repo_id}/{filename}: {_first_line(err)}") from None


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"
