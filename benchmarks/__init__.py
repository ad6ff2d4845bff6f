"""The benchmark: latency and accuracy of every variant × backend × precision on this machine.

``python benchmarks/run.py --device cpu`` (see ``benchmarks/README.md``). The modules, one job each:

* :mod:`benchmarks.targets` — which formats/backends run on which ``--device``, and why not; the
  performance targets a run is checked against;
* :mod:`benchmarks.exports` — weights per variant (trained reference or random) and the exports;
* :mod:`benchmarks.measure` — frames, timing loops (the end-to-end stages too), loading and timing one
  artifact or PyTorch;
* :mod:`benchmarks.accuracy` — COCO mAP of an artifact or a PyTorch model (cached);
* :mod:`benchmarks.limits` — this machine's FP32/INT8 peaks and memory bandwidth, measured honestly;
* :mod:`benchmarks.context` — the BiFPN fusion ablation;
* :mod:`benchmarks.matrix` — the measurement matrix: one :class:`~benchmarks.results.Row` each;
* :mod:`benchmarks.results` — the row and result data model; :mod:`benchmarks.schema` its JSON Schema;
* :mod:`benchmarks.report` — the printed table, ``results.json`` and ``results.csv``;
* :mod:`benchmarks.plots` — the PNG plots;
* :mod:`benchmarks.resize` (a script of its own) — the letterbox's interpolation: time, parity, mAP.
"""
