"""`skinhpc prefetch JOB.yaml | --model NAME`: fill timm's hub cache on a login node so compute
nodes can run with HF_HUB_OFFLINE=1 (:mod:`skinhpc.model.net` never downloads at run time)."""

from __future__ import annotations

import os

import timm

from skinhpc.cli.parser import CommandParser, UsageError
from skinhpc.config import load_spec, plan_members


def main(argv: list[str]) -> int:
    ap = CommandParser(prog="skinhpc prefetch", description=__doc__.split("\n\n")[0])
    ap.add_argument("job", nargs="?", help="job YAML (every model of its members)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides")
    ap.add_argument("--model", action="append", default=[], help="timm model name (repeatable)")
    args = ap.parse_intermixed_args(argv)
    names = list(args.model)
    if args.job:
        job = load_spec(args.job, args.overrides)
        for member in plan_members(job):
            s = member.spec(job)
            if s.model.pretrained == "timm" and s.model.name not in names:
                names.append(s.model.name)
    if not names:
        print("prefetch: nothing to fetch (no member uses model.pretrained=timm)")
        return 0
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise UsageError("HF_HUB_OFFLINE is set, so nothing can be fetched; unset it on the login node")
    for name in names:
        timm.create_model(name, pretrained=True, num_classes=0)
        print(f"prefetch: {name} cached", flush=True)
    return 0
