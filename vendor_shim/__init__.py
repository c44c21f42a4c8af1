"""vendor_shim package."""
