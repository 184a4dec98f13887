"""Benchmarks of watchd against the emulator on loopback: `python -m benchmarks`.

One module per scenario, each exposing `run(size, workdir) -> Scenario`:

- `latency`: file closed → sidecar on disk, `watchd run` beside an inotifywait + curl script;
- `throughput`: a backlog through `watchd sync`, beside a raw httpx loop and a curl loop;
- `baidu`: Baidu calls per submitted image under a backlog (`sync` and `run`);
- `restart`: `watchd sync` with nothing to do over a large journal: time and peak RSS;
- `idle`: CPU seconds of an idle `watchd run` watching many directories.

What they share: `harness` (sizes, targets, figures), `children` (the processes under
test), `fixtures` (emulator, configs, images), `probe` (inotify wait for sidecars),
`shell` (the bash comparisons), `raw_upload` (the ceiling client), `report` (table, JSON).
Every figure is the median over repeated runs, and every comparison is a ratio taken
within one run before the median. docs/benchmarks.md has the results and their analysis.
"""
