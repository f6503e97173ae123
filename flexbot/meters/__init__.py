"""Meter sources, the quarter-hour builder and baselines.

Each source (`synthetic`, `csv_files`, `http_poll`, `mqtt`) turns the aggregator's meter data into
`Reading`s, which `MeterHub` keeps in the store; `builder` turns stored readings into the market's
quarter-hour energy points, and `baseline` computes baselines from their history.
"""
