"""A minimal stand-in for torchvision, importable only inside the remote-code worker.

No CPU build of torchvision installs on our machines, yet the official DeepSeek-OCR code
imports it for three image transforms.  The worker puts the folder holding this package
first on ``sys.path``; nothing else ever sees it.  Only what the official code uses is
provided, so a snapshot that needs more fails loudly with an AttributeError/ImportError.
"""

__version__ = "0.0.0+dsocr-flopcheck-stub"
DSOCR_STUB = True
