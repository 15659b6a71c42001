"""Helpers of bench/scale.py: synthetic COCO-sized data, a time + memory meter, the timed steps, a null extractor.

A package (not ``bench/*.py`` files) so that ``make bench``, which runs every ``bench/*.py``, runs only
``bench/scale.py`` itself.
"""
