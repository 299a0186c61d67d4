"""Compare probe runs side by side: `python scripts/compare.py RUN_A RUN_B ... [--plot compare.png]`.

Prints a table of top-1/top-5 overall and top-1 per aspect-ratio bin, and draws all runs in one bar chart.
"""

from naraim.cli import ArgumentParser, run_main
from naraim.probe.plots import plot_accuracy_by_bin
from naraim.probe.results import format_table, load_runs


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="probe workdirs (each with results.json)")
    parser.add_argument("--plot", default="compare.png", help="path of the PNG chart ('' to skip)")
    args = parser.parse_args()
    runs = load_runs(args.runs)
    print(format_table(runs))
    if args.plot:
        plot_accuracy_by_bin(runs, args.plot)
        print(f"chart: {args.plot}")


if __name__ == "__main__":
    run_main(main)
