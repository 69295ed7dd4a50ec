"""Which zoo checkpoints are published, and under which Hub repository.

Every published checkpoint is one folder ``hub_configs/<arch>.<tag>/`` holding exactly what its
Hub repository ``wt-zoo/<arch>.<tag>`` holds, so the folders are the one list of published tags:
the model files give a tag its ``hf_hub_id`` when its folder exists. This module only reads
folder names (no torch, timm or huggingface_hub), so the model files can import it while they
register.

``WT_ZOO_HUB_CONFIGS`` (folders separated by ``os.pathsep``) replaces the default folder, the
repository's ``hub_configs/``; tests use it to publish checkpoints they make. The default is
found next to the package, which an editable install or a source checkout has and a wheel
does not (a wheel registers no ``hf_hub_id``; ``hf-hub:`` names still load).
"""
import os
from pathlib import Path
from typing import Dict, List

__all__ = ['HUB_ORG', 'HUB_CONFIGS_ENV', 'REPO_HUB_CONFIGS', 'hub_repo_id', 'hub_configs_dirs', 'published_folders',
           'published_hub_ids']

HUB_ORG = 'wt-zoo'
HUB_CONFIGS_ENV = 'WT_ZOO_HUB_CONFIGS'
REPO_HUB_CONFIGS = Path(__file__).resolve().parents[1] / 'hub_configs'


def hub_repo_id(name: str) -> str:
    """The Hub repository of a published ``arch.tag``."""
    return f'{HUB_ORG}/{name}'


def hub_configs_dirs() -> List[Path]:
    """The folders whose ``<arch>.<tag>`` subfolders are published, in priority order."""
    env = os.environ.get(HUB_CONFIGS_ENV)
    if env:
        return [Path(p) for p in env.split(os.pathsep) if p]
    return [REPO_HUB_CONFIGS]


def published_folders() -> Dict[str, Path]:
    """``arch.tag`` -> folder, for every folder holding a ``config.json`` (the first dir wins a name)."""
    found: Dict[str, Path] = {}
    for root in hub_configs_dirs():
        if not root.is_dir():
            continue
        for folder in sorted(root.iterdir()):
            name = folder.name
            if name.startswith('.') or name.count('.') != 1 or not (folder / 'config.json').is_file():
                continue
            found.setdefault(name, folder)
    return found


def published_hub_ids() -> Dict[str, str]:
    """``arch.tag`` -> Hub repository id, for ``family_default_cfgs``."""
    return {name: hub_repo_id(name) for name in published_folders()}
