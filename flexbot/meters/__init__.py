"""Meter sources, the catalogue, the quarter-hour builder and baselines.

Each source (`synthetic`, `csv_files`, `http_poll`, `mqtt`) turns the aggregator's meter data into
`Reading`s, which `MeterHub` keeps in the store. A source is a meter's own or shared by many meters
(its data names the meter of each reading: `source.Route`); `catalogue` reads thousands of meters
from one CSV file. `builder` turns stored readings into the market's quarter-hour energy points,
and `baseline` computes baselines from their history.
"""
