"""The data station: rows -> :class:`preftune.types.TokenizedPair`.

``load_splits`` reads train/eval rows (sources.py), ``normalize_rows`` recognises the format
and checks each row (formats.py), ``tokenize_rows`` applies chat templates, BOS/EOS and
truncation (tokenize.py).
"""

from preftune.data.formats import (DataError, PreferenceRow, UnpairedRow, detect_format,
                                   normalize_rows, pairs_to_unpaired)
from preftune.data.sources import hold_out, load_rows, load_splits, read_file
from preftune.data.tokenize import DataReport, tokenize_rows

__all__ = ["DataError", "DataReport", "PreferenceRow", "UnpairedRow", "detect_format",
           "hold_out", "load_rows", "load_splits", "normalize_rows", "pairs_to_unpaired",
           "read_file", "tokenize_rows"]
