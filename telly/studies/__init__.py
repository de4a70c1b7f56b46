"""Studies: run a part of the study, or read it back from the results store when it is current.

One module per research question: `probing` (RQ1), `similarity` (RQ2), `freezing` (RQ3 quality)
and `bench` (RQ3 cost). Chapters call these and `telly.report`, nothing else.
"""
from telly.profiles import get_profile

__all__ = ["get_profile"]  # the chapters' edge: they resolve their profile's name here, once
