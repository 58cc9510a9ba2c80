"""Settings: `from conf import Settings, load_settings`."""

from conf.settings import Settings, load_settings

__all__ = ["Settings", "load_settings"]
