"""
Figures drawn with matplotlib when the documentation is built, so that no
image is committed and none needs a program outside the C{docs} extra.

L{DIAGRAMS} names each figure's file under C{docs/_generated/} and the
function that draws it; the pages show them with C{.. figure::
_generated/NAME.png}.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

GENERATED = "_generated"
"""The folder, in the documentation's, that the figures are written to."""

_INK = "#1f2d3d"
_MUTED = "#5b6b7c"
_REQUEST = "#1f6fb2"
_REPLY = "#2e8b57"
_REFUSED = "#b23b3b"

_LAYERS = [
    (
        "Socket (the kernel)",
        "one UDP socket per service and address; receive time (SO_TIMESTAMPNS),\n"
        "address asked (IP_PKTINFO on a wildcard socket)",
        "#eef2f6",
    ),
    (
        "Port: udptime.port.ServerPort",
        "reads up to 128 datagrams per wake-up (recvmmsg), asks the protocol,\n"
        "sends each reply (sendto, or sendmmsg for a batch) and counts what it did",
        "#e3edf7",
    ),
    (
        "Protocol: udptime.server",
        "TextTimeServer, NTPServer, TimeServer, DaytimeServer, EchoServer:\n"
        "decide(datagram, address, receive time) returns a decision:\n"
        "the reply's bytes, or a refusal (counted, maybe with a KoD or error line)",
        "#e4f1ea",
    ),
    (
        "Policy: udptime.policy, shared by every service",
        "allow/deny, loop guard, per-client token bucket, global cap;\n"
        "every decision counted (udptime.counters)",
        "#f6ece3",
    ),
    (
        "Codec: udptime.text, ntp, rfc868, daytime, echo",
        "pure functions: parse the request, build the reply from values;\n"
        "no socket, no reactor, no clock read",
        "#efe8f5",
    ),
    (
        "Clock: udptime.clock",
        "the wall clock and the kernel's synchronisation state\n"
        "(leap, stratum, root dispersion), read at most once a second",
        "#f3f3e6",
    ),
]


def drawDatagramPath(path: Path) -> None:
    """
    Draw the layers a request datagram goes through in the server, and the
    way its reply goes back, into the PNG file C{path}.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    figure = pyplot.figure(figsize=(11.4, 7), dpi=110)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_xlim(0, 114)
    axes.set_ylim(0, 70)
    axes.axis("off")

    def box(x: float, y: float, w: float, h: float, colour: str) -> None:
        axes.add_patch(
            FancyBboxPatch(
                (x, y),
                w,
                h,
                boxstyle="round,pad=0.4,rounding_size=1.2",
                facecolor=colour,
                edgecolor=_INK,
                linewidth=1.0,
            )
        )

    def arrow(
        start: tuple[float, float], end: tuple[float, float], colour: str
    ) -> None:
        axes.add_patch(
            FancyArrowPatch(
                start,
                end,
                arrowstyle="-|>",
                mutation_scale=14,
                color=colour,
                linewidth=1.8,
            )
        )

    def note(x: float, y: float, text: str, colour: str, **style: Any) -> None:
        axes.text(x, y, text, color=colour, linespacing=1.3, **style)

    # The layers, top (socket) to bottom (clock).
    left, width, height, gap, top = 32.0, 54.0, 7.0, 2.4, 60.0
    centres = []
    for index, (title, detail, colour) in enumerate(_LAYERS):
        y = top - index * (height + gap)
        box(left, y, width, height, colour)
        note(
            left + 1.2,
            y + height - 2.0,
            title,
            _INK,
            fontsize=10,
            weight="bold",
            va="center",
        )
        note(left + 1.2, y + 2.2, detail, _MUTED, fontsize=7.9, va="center")
        centres.append(y + height / 2)

    # The client: request in, reply out.
    box(2, 53, 18, 11, "#ffffff")
    note(11, 61.2, "Client", _INK, ha="center", fontsize=11, weight="bold")
    note(
        11,
        54.6,
        "udptime HOST, query(),\nchronyd, rdate,\nntpdig ...",
        _MUTED,
        ha="center",
        fontsize=8.5,
    )
    arrow((20.8, 61.5), (left - 0.8, centres[0] + 1.6), _REQUEST)
    note(22.0, 64.6, "1  request", _REQUEST, fontsize=9, weight="bold")
    arrow((left - 0.8, centres[0] - 1.6), (20.8, 56.5), _REPLY)
    note(21.0, 54.0, "7  reply", _REPLY, fontsize=9, weight="bold")

    # Down the right edge the request; back up, the reply.  The protocol
    # reads the clock and hands the time to the codec as a value.
    rail, clock, back = left + width + 3.0, left + width + 15.0, left + width + 20.0
    steps = ["2  read", "3  answer?", "4  admit?", "5  parse, build"]
    for upper, label in enumerate(steps):
        arrow((rail, centres[upper] - 1.2), (rail, centres[upper + 1] + 1.2), _REQUEST)
        note(
            rail + 1.0,
            (centres[upper] + centres[upper + 1]) / 2,
            label,
            _REQUEST,
            fontsize=8,
            va="center",
        )
    arrow((clock, centres[5]), (clock, centres[2]), _MUTED)
    note(
        clock - 1.0,
        (centres[5] + centres[4]) / 2,
        "the time,\nas a value",
        _MUTED,
        fontsize=8,
        va="center",
        ha="right",
    )
    arrow((back, centres[4]), (back, centres[1]), _REPLY)
    note(
        back + 1.0,
        (centres[4] + centres[1]) / 2,
        "6  the reply",
        _REPLY,
        fontsize=8,
        va="center",
        rotation=90,
        ha="left",
    )

    # A refusal ends at the policy.
    note(
        2,
        centres[3],
        "Refused: dropped and\ncounted (NTP over its\nrate: now and then a\n"
        "Kiss-o'-Death instead)",
        _REFUSED,
        fontsize=8,
        va="center",
    )
    arrow((left - 0.8, centres[3]), (23.0, centres[3]), _REFUSED)

    # Who builds the tree.
    note(
        2,
        (centres[4] + centres[5]) / 2,
        "twistd udptime (udptime.tap):\n"
        "one UDPListenService per\nservice and socket;\n--workers N: N processes\n"
        "on the same ports",
        _MUTED,
        fontsize=8,
        va="center",
    )
    note(
        2,
        3.0,
        "Data flows one way: each layer knows only the ones below it.",
        _MUTED,
        fontsize=8.5,
        style="italic",
    )

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


DIAGRAMS: dict[str, Callable[[Path], None]] = {
    "datagram-path.png": drawDatagramPath,
}
"""Each figure's file name, and what draws it."""


def drawAll(directory: Path) -> list[Path]:
    """
    Draw every figure of L{DIAGRAMS} into C{directory} that is missing or
    older than this module.

    @return: the files drawn.
    """
    drawn = []
    source = Path(__file__).stat().st_mtime
    for name, draw in DIAGRAMS.items():
        path = directory / name
        if not path.exists() or path.stat().st_mtime < source:
            draw(path)
            drawn.append(path)
    return drawn


def _builderInited(app: Any) -> None:
    drawAll(Path(app.srcdir) / GENERATED)


def setup(app: Any) -> dict[str, Any]:
    """
    The Sphinx extension: draw the figures as the build starts, before the
    pages that show them are read.
    """
    app.connect("builder-inited", _builderInited)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
