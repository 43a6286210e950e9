"""The block types, one module each. Importing this package imports every module in it, so each
`@register_block` class is in `base.BLOCK_TYPES`: a new block type is a new module here."""
import importlib
import pkgutil

for module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{module.name}")
