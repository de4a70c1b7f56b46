"""Report: pure functions of records. Rows, tables, the book's generated sentences and its charts.

Nothing here trains, loads a model or writes a file: records in, text, frames or charts out. One
module per research question (`probing`, `similarity`, `freezing`, `bench`) beside `charts`
(altair, offline rendering, provenance boxes) and `paper` (the paper's figures).
"""
