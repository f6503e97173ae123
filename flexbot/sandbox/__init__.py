"""The local GLocalFlex marketplace: `flexbot sandbox`.

It shares `flexbot.model`, `flexbot.wire` and `flexbot.rules` with the client and nothing else, so a
client that works against it works against the real market's documented behaviour.
"""
