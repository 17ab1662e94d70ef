"""`vit convert --from-hub ID`: fetch a model folder from the Hugging Face Hub, never hang.

huggingface_hub's `snapshot_download` asks the Hub for the repository's file list with no
timeout, so behind a firewall that drops packets (or a proxy that never answers) it waits
forever. Here one request with a timeout (`model_info`) tells whether the Hub answers and
which files the repository has; only then are the few files needed fetched, each with
huggingface_hub's own timeouts. When the Hub cannot be reached the local cache is tried, and
failing that the user gets one line that says what to download by hand.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from vitcli.errors import VitError
from vitcli.files import read_json_file

# What a ViT folder needs: config, optional preprocessing, safetensors weights (maybe sharded).
CONFIG, PROCESSOR = "config.json", "preprocessor_config.json"
WEIGHTS, INDEX = "model.safetensors", "model.safetensors.index.json"
_SHARD = re.compile(r"model-\d+-of-\d+\.safetensors")
DEFAULT_TIMEOUT = 10.0  # seconds, huggingface_hub's own default for metadata requests


def download_from_hub(repo_id: str, *, cache_dir: str | Path | None = None,
                      timeout: float | None = None, endpoint: str | None = None) -> Path:
    """A local folder holding `repo_id`'s config, preprocessor config and safetensors weights.

    `timeout` (seconds; default $HF_HUB_ETAG_TIMEOUT or 10) bounds every request, so an
    unreachable Hub costs seconds. `endpoint` is a Hub mirror (default $HF_ENDPOINT).
    """
    try:
        from huggingface_hub import HfApi, constants

        # huggingface_hub.utils has exported these since 0.1x (huggingface_hub.errors: 0.24+)
        from huggingface_hub.utils import HfHubHTTPError, RepositoryNotFoundError
    except ImportError:
        raise VitError("--from-hub needs huggingface_hub: pip install huggingface_hub") from None
    if timeout is None:
        try:
            timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or DEFAULT_TIMEOUT)
        except ValueError:
            timeout = DEFAULT_TIMEOUT
    offline = bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() \
        in ("1", "true", "yes", "on")
    from vitcli.convert.catalog import download_hint

    fix = download_hint(repo_id)
    if offline:
        why = "offline (HF_HUB_OFFLINE is set)"
    else:
        try:
            info = HfApi(endpoint=endpoint).model_info(repo_id, timeout=timeout)
        except RepositoryNotFoundError:
            raise VitError(f"{repo_id}: no such model on the Hugging Face Hub "
                           "(or it is private: log in with `hf auth login`)") from None
        except HfHubHTTPError as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            why = f"the Hub answered HTTP {status}" if status else "the Hub refused the request"
        # The network errors are the HTTP library's own (requests or httpx, by version).
        except Exception as exc:  # noqa: BLE001
            why = f"the Hub is unreachable ({_reason(exc, timeout)})"
        else:
            files = {s.rfilename for s in (info.siblings or [])}
            return _fetch(repo_id, files, cache_dir=cache_dir, timeout=timeout,
                          endpoint=endpoint, fix=fix)
    cached = _from_cache(repo_id, cache_dir)
    if cached is None:
        raise VitError(f"cannot download {repo_id}: {why} and it is not in the local cache; {fix}")
    return cached


def _reason(exc: Exception, timeout: float) -> str:
    name = type(exc).__name__
    if "Timeout" in name:
        return f"no answer within {timeout:g} s"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{name}: {first}"[:160] if first else name


def _wanted(files: set[str], repo_id: str, fix: str) -> list[str]:
    """The files of `files` to fetch, weights last (an index brings its shards after it)."""
    if CONFIG not in files:
        raise VitError(f"{repo_id}: no {CONFIG} on the Hub; not a transformers or timm model")
    if WEIGHTS in files:
        weights = [WEIGHTS]
    elif INDEX in files:
        weights = [INDEX] + sorted(f for f in files if _SHARD.fullmatch(f))
    else:
        raise VitError(f"{repo_id}: no {WEIGHTS} on the Hub (vitcli never downloads pickle "
                       f"weights); {fix}, converting a .bin with --allow-pickle")
    return [CONFIG] + ([PROCESSOR] if PROCESSOR in files else []) + weights


def _fetch(repo_id: str, files: set[str], *, cache_dir: str | Path | None, timeout: float,
           endpoint: str | None, fix: str) -> Path:
    """Download the needed files into the Hub cache; the snapshot folder holding them."""
    from huggingface_hub import hf_hub_download

    folder: Path | None = None
    for name in _wanted(files, repo_id, fix):
        try:
            path = hf_hub_download(repo_id, name, cache_dir=cache_dir, etag_timeout=timeout,
                                   endpoint=endpoint)
        except Exception as exc:  # noqa: BLE001 (network errors, by HTTP library)
            raise VitError(f"cannot download {repo_id}/{name} ({_reason(exc, timeout)}); "
                           f"{fix}") from None
        folder = Path(path).parent
    assert folder is not None
    return folder


def _from_cache(repo_id: str, cache_dir: str | Path | None) -> Path | None:
    """The cached snapshot folder with a config and complete weights, or None."""
    from huggingface_hub import try_to_load_from_cache

    def cached(name: str) -> Path | None:
        hit = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        return Path(hit) if isinstance(hit, str) else None

    config = cached(CONFIG)
    if config is None:
        return None
    if cached(WEIGHTS) is not None:
        return config.parent
    index = cached(INDEX)
    if index is None:
        return None
    try:
        shards = set(read_json_file(index)["weight_map"].values())  # type: ignore[index]
    except (VitError, KeyError, TypeError, AttributeError):
        return None
    return config.parent if all(cached(s) is not None for s in shards) else None
