"""`flexbot check-config [--config PATH]`: validate the config, resolve its secret references,
and print every problem located by file and path (exit 2), or a short summary (exit 0)."""

from __future__ import annotations

import argparse

from flexbot import config
from flexbot.commands import add_config_option, add_log_format, load_config
from flexbot.redaction import redact_url


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("check-config", help="validate the configuration")
    add_config_option(parser)
    add_log_format(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    loaded = load_config(args.config)
    if loaded is None:
        return 2
    market = loaded.config.market
    where = redact_url(market.url)  # a URL may carry credentials (https://user:pass@host)
    print(f"{args.config}: valid; market {where} as {market.username}, password resolved")
    for spec in loaded.strategies:
        modes = [m for m, on in (("disabled", not spec.enabled), ("dry run", spec.dry_run)) if on]
        suffix = f" ({', '.join(modes)})" if modes else ""
        print(f"  strategy {spec.name}: {spec.cls.__name__} v{spec.version}{suffix}")
    enabled = sum(s.enabled for s in loaded.strategies)
    print(f"{len(loaded.strategies)} strategies, {enabled} enabled; store {loaded.store_path}")
    if loaded.meters:
        own = sum(m.source is not None for m in loaded.meters)
        fed = len(loaded.meters) - own
        shared = len(loaded.meter_sources)
        print(f"meters: {own} with a source of their own, {fed} fed by {shared} shared source(s)")
    assets = loaded.config.assets
    if assets is not None:
        broker = assets.mqtt
        heard = f"discovered on {broker.host}:{broker.port} ({broker.prefix}/…)" if broker else ""
        fixed = f"{len(loaded.fixed_assets)} with fixed limits" if loaded.fixed_assets else ""
        nothing = "no broker and no catalogue: no asset can be known, every sell will be refused"
        print(f"assets: {', '.join(p for p in (heard, fixed) if p) or nothing}")
    for line in unmetered(loaded):
        print(line)
    for path, problem in config.refused_everywhere(loaded.config.risk, list(loaded.strategies)):
        print(f"warning: {path}: {problem}")
    return 0


def unmetered(loaded: config.LoadedConfig) -> list[str]:
    """Warnings (not problems: a strategy may only buy there): the sites of enabled strategies
    with no meter, whose sells would get no metering, nor a baseline from meters."""
    metered = {m.location_id for m in loaded.meters}
    out = []
    for spec in loaded.strategies:
        missing = [s for s in spec.location.location_id if s and s not in metered]
        if spec.enabled and missing:
            out.append(
                f"warning: strategy {spec.name}: no meter at {', '.join(missing)}: a sell there "
                "gets no metering and no baseline from meters (verification would fail)"
            )
    return out
