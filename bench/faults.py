"""``python -m bench.faults``: the fault campaign's long form.

Many seeds, each a scenario of the real agent against a real broker and simulated slaves with the
faults of the field at seeded random moments (``agent.testkit.campaign``), several at once; a
table of the scenarios and their outcomes, the totals the README quotes, and how long the first
reading took to reach a subscriber each time the broker came back (by fault kind). A failing
seed is printed with the command that replays it; it belongs in ``tests/faults/test_campaign.py``.

    python -m bench.faults                      # 40 scenarios of 25 s, 4 at a time (~5 min)
    python -m bench.faults --scenarios 200      # more
    python -m bench.faults --seed 14 --duration 25 --kinds kill,readonly
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agent.testkit.campaign import KINDS, RETURN_KINDS, RETURN_WITHIN, Campaign, Outcome, Return


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    kinds = tuple(args.kinds.split(",")) if args.kinds else KINDS
    unknown = set(kinds) - set(KINDS)
    if unknown:
        print(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(KINDS)}", file=sys.stderr)
        return 2
    seeds = (
        [args.seed]
        if args.seed is not None
        else list(range(args.first, args.first + args.scenarios))
    )
    workdir = Path(tempfile.mkdtemp(prefix="edge-agent-faults-"))
    started = time.monotonic()

    def one(seed: int) -> Outcome:
        directory = workdir / f"seed-{seed}"
        directory.mkdir()
        try:
            return Campaign(directory).run(seed, args.duration, kinds)
        finally:
            if not args.keep:
                shutil.rmtree(directory, ignore_errors=True)

    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        outcomes = list(pool.map(one, seeds))
    print(table(outcomes, time.monotonic() - started))
    print()
    print(returns_table([r for o in outcomes for r in o.returns]))
    failed = [o for o in outcomes if not o.ok]
    for outcome in failed:
        print(
            f"\n{outcome}\nreplay: python -m bench.faults --seed {outcome.seed} "
            f"--duration {args.duration:g} --kinds {','.join(kinds)}"
        )
    if args.keep:
        print(f"\nkept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


def table(outcomes: list[Outcome], seconds: float) -> str:
    """Markdown: one row per scenario, then the totals."""
    rows = [
        "| seed | faults | ids generated | delivered | buffered | dropped | lost to damage "
        "| unaccounted | other content | crashes | tracebacks | broker back: first reading, s "
        "| outcome |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    totals: Counter[str] = Counter()
    for o in outcomes:
        r = o.reconciled
        kinds = Counter(e.kind for e in o.events)
        faults = ", ".join(f"{k}×{n}" if n > 1 else k for k, n in sorted(kinds.items()))
        figures = (
            (
                r.generated,
                r.delivered,
                r.buffered,
                r.dropped,
                r.lost,
                len(r.unaccounted),
                len(r.clashes),
            )
            if r
            else ("–",) * 7
        )
        rows.append(
            f"| {o.seed} | {faults} | "
            + " | ".join(map(str, figures))
            + f" | {len(o.crashes)} | {len(o.tracebacks)} | {_returns_cell(o.returns)} "
            + f"| {'ok' if o.ok else 'FAILED'} |"
        )
        totals["faults"] += len(o.events)
        totals["errors"] += len(o.errors)
        totals["crashes"] += len(o.crashes)
        totals["tracebacks"] += len(o.tracebacks)
        if r:
            for key in ("generated", "delivered", "dropped", "lost"):
                totals[key] += getattr(r, key)
            totals["unaccounted"] += len(r.unaccounted)
            totals["clashes"] += len(r.clashes)
        totals["ok"] += o.ok
    skipped = sorted({s for o in outcomes for s in o.skipped})
    rows.append("")
    rows.append(
        f"{len(outcomes)} scenarios, {totals['faults']} faults injected, {totals['generated']} ids "
        f"generated, {totals['delivered']} delivered, {totals['dropped']} dropped (counted), "
        f"{totals['lost']} lost to damage (counted): {totals['unaccounted']} uncounted losses, "
        f"{totals['clashes']} ids repeated with different content, {totals['crashes']} crashes, "
        f"{totals['tracebacks']} tracebacks; {totals['ok']} of {len(outcomes)} scenarios ok "
        f"({seconds / 60:.1f} min)"
    )
    if totals["errors"]:
        rows.append(f"the campaign itself failed {totals['errors']} time(s): see below")
    rows += [f"not injected here: {s}" for s in skipped]
    return "\n".join(rows)


def _returns_cell(returns: list[Return]) -> str:
    """Each return's seconds; in brackets when the next fault came first."""
    cells = []
    for r in returns:
        took = "none" if r.seconds is None else f"{r.seconds:.1f}"
        cells.append(f"({took})" if r.interrupted else took)
    return ", ".join(cells) or "–"


def returns_table(returns: list[Return]) -> str:
    """Markdown: by fault kind, the seconds from the broker listening again to the next reading
    at a subscriber (returns the next fault interrupted are left out)."""
    by_kind: defaultdict[str, list[float]] = defaultdict(list)
    missing: Counter[str] = Counter()
    interrupted: Counter[str] = Counter()
    for r in returns:
        if r.interrupted:
            interrupted[r.event.kind] += 1
        elif r.seconds is None:
            missing[r.event.kind] += 1
        else:
            by_kind[r.event.kind].append(r.seconds)
    rows = [
        "| broker back after | returns | min | median | 90th pct | max "
        f"| over {RETURN_WITHIN:g} s | no reading | next fault first |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in [k for k in RETURN_KINDS if k in by_kind or k in missing or k in interrupted]:
        times = sorted(by_kind[kind])
        over = sum(t > RETURN_WITHIN for t in times)
        rows.append(
            f"| {kind} | {len(times)} | {_figures(times)} | {over} | {missing[kind]} "
            f"| {interrupted[kind]} |"
        )
    every = sorted(t for times in by_kind.values() for t in times)
    rows.append(
        f"| all | {len(every)} | {_figures(every)} "
        f"| {sum(t > RETURN_WITHIN for t in every)} | {sum(missing.values())} "
        f"| {sum(interrupted.values())} |"
    )
    return "\n".join(rows)


def _figures(times: list[float]) -> str:
    if not times:
        return "– | – | – | –"
    ninetieth = times[min(len(times) - 1, round(0.9 * (len(times) - 1)))]
    return f"{times[0]:.2f} | {statistics.median(times):.2f} | {ninetieth:.2f} | {times[-1]:.2f}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.faults", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--scenarios", type=int, default=40, help="how many seeds (default 40)")
    parser.add_argument("--first", type=int, default=1, help="the first seed (default 1)")
    parser.add_argument("--seed", type=int, help="run this seed alone (a replay)")
    parser.add_argument("--duration", type=float, default=25.0, help="seconds per scenario")
    parser.add_argument(
        "--kinds", help=f"fault kinds, comma-separated (default all: {','.join(KINDS)})"
    )
    parser.add_argument("--parallel", type=int, default=4, help="scenarios at once (default 4)")
    parser.add_argument("--keep", action="store_true", help="keep each scenario's directory")
    return parser


if __name__ == "__main__":
    sys.exit(main())
