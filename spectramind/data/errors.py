"""The one error type of the data path: it names the planet and the file at fault."""

from __future__ import annotations

from pathlib import Path


class PlanetDataError(Exception):
    """Bad or missing input for one planet.

    ``str(err)`` reads ``planet 123 (visit 0): FILE: what is wrong`` so a summary line alone
    tells the user where to look.
    """

    def __init__(self, planet_id: int | str | None, file: str | Path | None, message: str, visit: int | None = None):
        self.planet_id = planet_id
        self.file = str(file) if file is not None else None
        self.visit = visit
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.planet_id is not None:
            where.append(f"planet {self.planet_id}" + (f" (visit {self.visit})" if self.visit is not None else ""))
        if self.file:
            where.append(self.file)
        return ": ".join(where + [self.message])

    def __reduce__(self):
        return (type(self), (self.planet_id, self.file, self.message, self.visit))
