"""Recipes shipped with the package: `--config NAME` loads `bertjax/configs/NAME.py`."""
