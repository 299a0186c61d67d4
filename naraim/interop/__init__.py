"""Moving backbones between naraim and other libraries (docs/interop.md)."""
