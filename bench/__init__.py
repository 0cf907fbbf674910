"""Side-by-side benchmark of edgegemma and its peers (llama-cpp-python, sentence-transformers): `python -m bench.run`.

    workloads.py  the work every system does: reference texts, a synthetic batch, one short query
    systems.py    the systems (id, how to build one, how it encodes), used inside the worker
    worker.py     one system in one fresh process: cold start, latency, throughput, peak RSS
    run.py        the command: prepares files, alternates systems over rounds, prints the table, writes JSON

bench/kernel_designs.py (kernel designs on their own) is separate and imports nothing from here.
"""
