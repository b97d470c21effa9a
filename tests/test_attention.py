"""Attention selection: auto -> SDPA on the CPU, xformers only on CUDA, and never imported on the CPU path."""
import importlib.util
import json
import subprocess
import sys
import textwrap

import pytest

from imagegen import attention
from imagegen.attention import attention_processor_names, resolve_attention
from imagegen.errors import UserError


def test_auto_on_cpu_is_sdpa():
    assert resolve_attention("auto", "cpu") == "sdpa"
    assert resolve_attention("sdpa", "cuda") == "sdpa"


def test_xformers_without_cuda_is_a_clear_error():
    with pytest.raises(UserError, match="attention 'xformers' needs a CUDA device, got device 'cpu'"):
        resolve_attention("xformers", "cpu")


def test_xformers_on_cuda_without_the_package_is_a_clear_error(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "xformers" else real_find_spec(name, *a))
    with pytest.raises(UserError, match=r"xformers is not installed; pip install 'imagegen\[gpu\]'"):
        resolve_attention("xformers", "cuda")
    assert resolve_attention("auto", "cuda") == "sdpa"


def test_auto_on_cuda_takes_xformers_only_when_it_runs(monkeypatch):
    monkeypatch.setattr(attention, "xformers_usable", lambda: True)
    assert resolve_attention("auto", "cuda:0") == "xformers"
    monkeypatch.setattr(attention, "xformers_usable", lambda: False)
    assert resolve_attention("auto", "cuda:0") == "sdpa"


def test_cpu_pipeline_uses_sdpa_processors_and_never_imports_xformers(tiny_pipe, fast_settings):
    prior, decoder = fast_settings
    tiny_pipe("a red circle", seed=0, prior=prior, decoder=decoder, progress=False)
    assert tiny_pipe.attention_backend == "sdpa"
    for model in (tiny_pipe.prior, tiny_pipe.unet, tiny_pipe.vae):
        names = attention_processor_names(model)
        assert names and all(name.endswith("2_0") for name in names), names  # torch SDPA processors
    if importlib.util.find_spec("xformers") is None:  # (an installed xformers is imported by diffusers itself)
        assert "xformers" not in sys.modules


# A stand-in xformers package, first on sys.path: importing it records which files were on the import stack.
FAKE_XFORMERS = """
import json, os, traceback
with open(os.environ["XFORMERS_IMPORTS"], "a") as log:
    log.write(json.dumps([frame.filename for frame in traceback.extract_stack()]) + "\\n")
"""


def test_the_cpu_path_never_imports_xformers_even_where_it_is_installed(tmp_path, tiny_model_dir):
    """With an importable xformers on sys.path, loading the pipeline and generating on the CPU runs no imagegen code
    that imports it (diffusers may import an installed xformers at its own import time; that is not ours)."""
    (tmp_path / "xformers").mkdir()
    (tmp_path / "xformers" / "__init__.py").write_text(FAKE_XFORMERS)
    imports = tmp_path / "imports.jsonl"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import importlib.util
        assert importlib.util.find_spec("xformers") is not None
        import imagegen
        from imagegen.settings import DecoderSettings, PriorSettings
        pipe = imagegen.load_pipeline({str(tiny_model_dir)!r})
        pipe("a red circle", seed=0, prior=PriorSettings(steps=2), decoder=DecoderSettings(steps=2, width=32,
             height=32), progress=False)
        print(pipe.attention_backend)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "XFORMERS_IMPORTS": str(imports)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "sdpa"
    stacks = [json.loads(line) for line in imports.read_text().splitlines()] if imports.exists() else []
    ours = [name for stack in stacks for name in stack if "/imagegen/" in name and "/tests/" not in name]
    assert ours == [], ours
