"""
The compiled send step of NTP replies (udptime/_sendstep.c; see
L{udptime.sendstep}).
"""

from udptime.address import Address
from udptime.decision import Ancillary

def stamp(
    start: bytes,
    origin: bytes,
    receive: int,
    fuzz: int,
    fuzzBits: int,
    halfStepsPerSecond: float,
    offsetUnits: int,
    transmit: float,
    /,
) -> bytes: ...
def seconds(seconds: int, nanoseconds: int, /) -> float: ...
def wide(value: int, /) -> int: ...

class SendStep:
    fd: int
    family: int
    def __init__(self, fd: int, family: int) -> None: ...
    def send(
        self,
        start: bytes,
        origin: bytes,
        receive: int,
        fuzz: int,
        fuzzBits: int,
        halfStepsPerSecond: float,
        offsetUnits: int,
        address: Address,
        ancillary: Ancillary | None,
        /,
    ) -> int | None: ...
