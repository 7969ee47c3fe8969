"""A job's resumable work folder, ``<output>.work/``, with its contents named.

It holds the ViT feature store(s), the trained model, the level-0 zarr arrays prediction fills and one
done marker per finished tile; ``run.json`` records the job and its inputs, so a rerun of the same call
continues where it stopped and any other call starts over. It carries our marker: a folder of that name
we did not make is refused, never deleted.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dinosaw_deploy.files import fingerprint, is_owned, make_owned_dir, remove_owned
from dinosaw_deploy.segment.options import Echo


@dataclass(frozen=True)
class WorkFolder:
    """The work folder of a job writing ``output``."""

    path: Path

    @classmethod
    def of(cls, output: str | os.PathLike) -> WorkFolder:
        output = Path(output)
        return cls(output.with_name(output.name + ".work"))

    @property
    def record(self) -> Path:
        """``run.json``: the job's command and input fingerprints."""
        return self.path / "run.json"

    @property
    def model(self) -> Path:
        """The model trained by this job (``model.dsw``), kept so a resumed job does not train again."""
        return self.path / "model.dsw"

    @property
    def done(self) -> Path:
        """The folder of done markers of predicted tiles or blocks."""
        return self.path / "done"

    def features(self, index: int | None = None) -> Path:
        """The ViT feature store (``features.zarr``; of the ``index``-th image of a several-image job)."""
        return self.path / ("features.zarr" if index is None else f"features_{index}.zarr")

    def array(self, key: str, ome_zarr: bool) -> Path:
        """Where prediction writes ``key`` (labels, probabilities): an OME-Zarr group finished in place,
        or a plain zarr array converted to OME-TIFF at the end."""
        return self.path / (f"{key}.ome.zarr" if ome_zarr else f"{key}.zarr")

    def claim(self, command: dict[str, Any], inputs: list[Path], echo: Echo) -> None:
        """Reuse the folder if we made it for this very command on these very inputs; else start it over."""
        record = json.dumps({"command": command, "inputs": [fingerprint(p) for p in inputs]}, sort_keys=True)
        if is_owned(self.path):
            if self.record.is_file() and self.record.read_text() == record:
                echo(f"resuming the unfinished run in {self.path}")
                return
            echo(f"{self.path} belongs to a different run; starting over")
        remove_owned(self.path, inputs)
        make_owned_dir(self.path)
        self.record.write_text(record)

    def remove(self, inputs: list[Path]) -> None:
        """Delete the folder (the job is done); never one that holds an input."""
        remove_owned(self.path, inputs)
