"""Output faults: answers that are well-formed and successful but wrong, as a bad release of a
provider (or of docpipe's settings) would give them. A worker revision pointed at them completes
every job and writes worse output, which only output checks can tell (issue 18).

A request asks for one through its URL or its API key, so that one set of workers can use a
degraded mock while others use the same mock unharmed:

* a path prefix, `/_faults/<fault>[=<arg>]` before the service's own path: the base URL
  `http://mock:8000/_faults/zero/v1` for OpenAI clients, `http://mock:8000/_faults/truncate=0.3`
  for LlamaParse clients;
* an API key `fault:<fault>[=<arg>]` (only on a mock started without an API key to check).

Faults of LlamaParse (in the markdown of a finished job):
  truncate[=F]  keep the first fraction F (default 0.3) of each page's text ("half of each page")
  empty         an empty markdown
Faults of OpenAI embeddings (each vector of the answer):
  zero                 vectors of zeros
  wrong_dimensions[=N] vectors of N dimensions (default: half of those asked for)
  other_model[=S]      unrelated vectors, as from another model: the right vectors through a
                       fixed rotation seeded by S (default 1); similar texts stay similar among
                       themselves, unrelated to the model's other answers
  nan                  a NaN in each vector (JSON `NaN` with encoding_format=float)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import numpy.typing as npt

Service = Literal["llamaparse", "openai"]

PATH_PARAMETER = "output_fault"
PATH_PREFIX = "/_faults/"
API_KEY_PREFIX = "fault:"

PARSE_FAULTS = ("truncate", "empty")
EMBEDDING_FAULTS = ("zero", "wrong_dimensions", "other_model", "nan")
_SERVICE_FAULTS: dict[Service, tuple[str, ...]] = {
    "llamaparse": PARSE_FAULTS,
    "openai": EMBEDDING_FAULTS,
}
_SERVICE_NAMES: dict[Service, str] = {"llamaparse": "LlamaParse", "openai": "OpenAI"}

DEFAULT_TRUNCATE_FRACTION = 0.3
DEFAULT_OTHER_MODEL_SEED = 1


class OutputFaultError(ValueError):
    """A fault that does not exist, does not apply to the service, or has a bad argument."""


@dataclass(frozen=True, slots=True)
class OutputFault:
    """One output fault and its argument (None: the fault's default)."""

    name: str
    arg: float | None = None


def routed_path(path: str) -> str:
    """The route that serves `path` with an output fault named in the URL."""
    return f"{PATH_PREFIX}{{{PATH_PARAMETER}}}{path}"


def service_path(path: str) -> str:
    """`path` without an output fault's prefix: the path the service itself answers."""
    if not path.startswith(PATH_PREFIX):
        return path
    _, slash, rest = path[len(PATH_PREFIX) :].partition("/")
    return slash + rest


def requested_spec(path_value: str | None, api_key: str | None) -> str | None:
    """The output fault a request asks for: its URL's, else its API key's; None when neither."""
    if path_value is not None:
        return path_value
    if api_key is not None and api_key.startswith(API_KEY_PREFIX):
        return api_key[len(API_KEY_PREFIX) :]
    return None


def parse_output_fault(spec: str, service: Service) -> OutputFault:
    """The fault `spec` (`name` or `name=arg`) names for `service`; OutputFaultError says why
    it names none."""
    name, has_arg, raw = spec.strip().partition("=")
    allowed = _SERVICE_FAULTS[service]
    if name not in allowed:
        other = next((s for s, names in _SERVICE_FAULTS.items() if name in names), None)
        where = (
            f"{name!r} is a fault of the {_SERVICE_NAMES[other]} mock"
            if other is not None
            else f"unknown output fault {name!r}"
        )
        raise OutputFaultError(
            f"{where}; the {_SERVICE_NAMES[service]} mock's are {', '.join(allowed)}"
        )
    if not has_arg:
        return OutputFault(name)
    if name in ("empty", "zero", "nan"):
        raise OutputFaultError(f"output fault {name!r} takes no argument, got {raw!r}")
    try:
        value = float(raw)
    except ValueError:
        raise OutputFaultError(f"output fault {name!r}: {raw!r} is not a number") from None
    if name == "truncate" and not 0.0 < value <= 1.0:
        raise OutputFaultError(
            f"output fault 'truncate': the fraction kept must be in (0, 1], got {raw}"
        )
    if name in ("wrong_dimensions", "other_model") and (not value.is_integer() or value < 0):
        raise OutputFaultError(f"output fault {name!r}: expected a whole number, got {raw!r}")
    if name == "wrong_dimensions" and value < 1:
        raise OutputFaultError("output fault 'wrong_dimensions': at least 1 dimension, got 0")
    return OutputFault(name, value)


def degrade_markdown(markdown: str, fault: OutputFault) -> str:
    """The markdown of a finished parse as `fault` (a LlamaParse fault) spoils it."""
    if fault.name == "empty":
        return ""
    fraction = DEFAULT_TRUNCATE_FRACTION if fault.arg is None else fault.arg
    # Page by page (form feeds separate pages): a parser that loses the end of every page.
    return "\f".join(page[: math.ceil(len(page) * fraction)] for page in markdown.split("\f"))


def answered_dimensions(fault: OutputFault | None, requested: int) -> int:
    """The dimensions of the vectors answered for `requested`: other than requested under
    `wrong_dimensions` (half of them by default, 2 for a request of 1)."""
    if fault is None or fault.name != "wrong_dimensions":
        return requested
    if fault.arg is not None:
        return int(fault.arg)
    return requested // 2 if requested > 1 else 2


def degrade_vector(vector: npt.NDArray[np.float64], fault: OutputFault) -> npt.NDArray[np.float64]:
    """A vector of the answer as `fault` (an OpenAI fault) spoils it."""
    if fault.name == "zero":
        return np.zeros_like(vector)
    if fault.name == "nan":
        spoiled = vector.copy()
        spoiled[0] = math.nan
        return spoiled
    if fault.name == "other_model":
        seed = DEFAULT_OTHER_MODEL_SEED if fault.arg is None else int(fault.arg)
        permutation, signs = _rotation(seed, len(vector))
        return signs * vector[permutation]
    return vector  # wrong_dimensions: the vector was made at the wrong size already


@lru_cache(maxsize=64)
def _rotation(seed: int, dimensions: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    # A signed permutation is orthogonal: lengths and the angles between the "other model's"
    # vectors are kept, while each is all but orthogonal to the right vector of its text.
    rng = np.random.default_rng(seed)
    return rng.permutation(dimensions), rng.choice(np.array([-1.0, 1.0]), size=dimensions)
