"""The options of `imagegen serve`, declared once: each field is a command-line option (imagegen.options) and the
setting the server reads. No FastAPI, uvicorn or torch here: `imagegen --help` imports this module.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..options import option
from ..presets import DEFAULT_PRESET

NO_OUTPUTS = "none"


@dataclass(frozen=True)
class ServeOptions:
    model: str = option(DEFAULT_PRESET, "preset name, preset .toml or model folder (default %(default)s)",
                        metavar="MODEL")
    host: str = option("127.0.0.1", "address to listen on (default %(default)s: this machine only)", metavar="HOST")
    port: int = option(7860, "port to listen on; 0 picks a free one (default %(default)s, as AUTOMATIC1111)",
                       metavar="PORT")
    api_auth: str | None = option(None, "HTTP Basic credentials that every /sdapi route and the web UI require",
                                  metavar="USER:PASS[,USER:PASS]")
    api_key: str | None = option(None, "bearer key that every /v1 (OpenAI) route requires", metavar="KEY")
    max_batch: int = option(8, "most images in one pipeline call made of concurrent requests (default "
                               "%(default)s; 1 = one request at a time, as AUTOMATIC1111)", metavar="N")
    max_wait_ms: float = option(50.0, "how long a request waits for companions to share its batch (default "
                                      "%(default)s ms)", metavar="MS")
    outputs: str = option("outputs", f"folder the images are saved in, or '{NO_OUTPUTS}' (default %(default)s)",
                          metavar="DIR|none")
    max_images: int = option(16, "most images one request may ask for (default %(default)s)", metavar="N")
    max_steps: int = option(150, "most prior or decoder steps a request may ask for (default %(default)s)",
                            metavar="N")
    max_pixels: int | None = option(None, "most pixels (width x height) of one image (default: the model's limit, "
                                          "256x256 for shapes)", metavar="N")
    max_body_bytes: int = option(8 * 1024 * 1024, "largest request body accepted (default %(default)s)",
                                 metavar="BYTES")
    max_queue: int = option(256, "most requests waiting at once; more are answered 429 (default %(default)s)",
                            metavar="N")
    shutdown_timeout: float = option(30.0, "on SIGTERM, how long in-flight requests may take to finish (default "
                                           "%(default)s s)", metavar="SECONDS")
    device: str = option("cpu", "cpu, cuda, cuda:N or mps (default %(default)s)", metavar="DEVICE")
    no_ui: bool = option(False, "serve the HTTP APIs only, without the web UI at /ui")

    def validate(self) -> None:
        for name, value, low in (("--max-batch", self.max_batch, 1), ("--max-images", self.max_images, 1),
                                 ("--max-steps", self.max_steps, 1), ("--max-body-bytes", self.max_body_bytes, 1024),
                                 ("--max-queue", self.max_queue, 1), ("--port", self.port, 0)):
            if value < low:
                raise UserError(f"{name} must be a whole number >= {low}, got {value}")
        if self.port > 65535:
            raise UserError(f"--port must be from 0 to 65535, got {self.port}")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise UserError(f"--max-pixels must be a whole number >= 1, got {self.max_pixels}")
        for name, value in (("--max-wait-ms", self.max_wait_ms), ("--shutdown-timeout", self.shutdown_timeout)):
            if not value >= 0:
                raise UserError(f"{name} must be a number >= 0, got {value}")
        self.credentials()
        if self.api_key is not None and not self.api_key.strip():
            raise UserError("--api-key must not be empty")

    def credentials(self) -> list[tuple[str, str]]:
        """--api-auth 'alice:secret,bob:pa:ss' -> [('alice', 'secret'), ('bob', 'pa:ss')]."""
        if self.api_auth is None:
            return []
        pairs = []
        for item in self.api_auth.split(","):
            user, sep, password = item.strip().partition(":")
            if not user or not sep or not password:
                raise UserError(f"--api-auth entry {item.strip()!r} should be USER:PASS (several separated by commas)")
            pairs.append((user, password))
        return pairs

    @property
    def outputs_folder(self) -> str | None:
        return None if self.outputs.lower() == NO_OUTPUTS else self.outputs
