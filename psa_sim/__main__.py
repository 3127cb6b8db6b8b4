import argparse

from .server import serve

parser = argparse.ArgumentParser(description="SeatSync's PSA simulator (ConnectWise, Autotask, Kaseya BMS)")
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=8099)
parser.add_argument("--seed", default="demo", help='"demo", a number of generated companies, or "none"')
args = parser.parse_args()
serve(args.host, args.port, None if args.seed == "none" else (args.seed if args.seed == "demo" else int(args.seed)))
