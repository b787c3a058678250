"""Where crmsync keeps its configuration and state, and the TOML config file.

``CRMSYNC_HOME`` (or ``--home``) puts everything in one folder; otherwise the platform's
config folder holds ``config.toml`` and its data folder the SQLite state store.

config.toml::

    [store]
    url = "postgresql+psycopg://crmsync@db/crmsync"   # default: SQLite in the data folder

    [history]
    keep_days = 90      # run reports older than this are forgotten; 0 keeps them all
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from crmsync.errors import ConfigError

APP = "crmsync"


@dataclass(frozen=True)
class Paths:
    config_dir: Path
    data_dir: Path

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.toml"

    @classmethod
    def resolve(cls, home: str | Path | None = None) -> Paths:
        home = home or os.environ.get("CRMSYNC_HOME")
        if home:
            path = Path(home).expanduser().resolve()
            return cls(path, path)
        import platformdirs

        return cls(Path(platformdirs.user_config_dir(APP)), Path(platformdirs.user_data_dir(APP)))


def store_url(paths: Paths) -> str:
    """The state store's SQLAlchemy URL: from config.toml, else SQLite in the data folder."""
    config = load_config(paths)
    url = config.get("store", {}).get("url")
    if url:
        return str(url)
    paths.data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{paths.data_dir / 'state.db'}"


def load_config(paths: Paths) -> dict:
    try:
        with paths.config_file.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{paths.config_file}: {exc}") from None


def keep_days(paths: Paths, default: int = 90) -> int:
    """How many days run reports are kept ([history] keep_days; 0: forever)."""
    value = load_config(paths).get("history", {}).get("keep_days", default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{paths.config_file}: [history] keep_days must be a whole number "
                          f"of days, 0 or more (0 keeps every run), not {value!r}")
    return value
