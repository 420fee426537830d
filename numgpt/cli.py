"""The ``numgpt`` command: ``numgpt gradcheck``, ``numgpt train``, ``numgpt sample``, ...

Only this module knows every room of the package; each subcommand is a thin
layer over a function a notebook can call directly.
"""

import argparse
import sys


def cmd_gradcheck(args):
    from .gradcheck import check_all_layers, format_table

    rows = check_all_layers(seed=args.seed, rtol=args.rtol, method=args.method)
    print(f"numgpt gradcheck: float64, seed {args.seed}, {args.method} check, "
          f"pass when max relative error < {args.rtol:g}")
    print(format_table(rows, args.rtol))
    failed = [(layer, r.name) for layer, r in rows if not (r.passed and r.max_rel_error < args.rtol)]
    if failed:
        print(f"\n{len(failed)} check(s) FAILED: " + ", ".join(f"{l}.{n}" for l, n in failed))
        return 1
    print(f"\nall {len(rows)} checks passed")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="numgpt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("gradcheck", help="check every layer's backward against finite differences (float64)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seed", type=int, default=0, help="seed for the random inputs")
    p.add_argument("--rtol", type=float, default=1e-7, help="largest relative error that passes")
    p.add_argument("--method", choices=["full", "adjoint"], default="full",
                   help="'full' compares every element, 'adjoint' one random direction")
    p.set_defaults(func=cmd_gradcheck)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
