"""Telly: which layers of a pre-trained code model matter, and what freezing the rest saves.

Importing telly sets HF_HUB_OFFLINE=1 unless the environment says otherwise: the default path never
reaches a model hub. Set HF_HUB_OFFLINE=0 before importing telly to let a hub model download. This
is the only place the library or the CLI sets it.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
