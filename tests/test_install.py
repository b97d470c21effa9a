"""An installed imagegen works from any folder: the wheel carries the presets, the templates, the training recipes, the
default model and the example adapters, and finds them through the package, never through the current folder.

The wheel is built from a copy of the checkout's files, installed with `pip install --no-deps --target DIR`, and run
with `python -S` (no site: the venv's editable-install finder stays out) and `PYTHONPATH=DIR:<this environment's
site-packages>` (the dependencies) from an empty folder. The probe proves the checkout is invisible there.
The search order itself (explicit, env, cwd, user, package; shadowing; `lora install`) is tested in-process below.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from imagegen import locations
from imagegen.cli import main

REPO = Path(__file__).resolve().parents[1]
MAX_WHEEL_BYTES = 40 * 1000 * 1000
SHIPPED = ["configs/models/shapes.toml", "configs/models/kandinsky-2-2.toml", "configs/templates/shapes-background.txt",
           "configs/train/shapes.toml", "configs/train/shapes-v0.5.toml", "lora_adapters/heart.safetensors",
           "lora_adapters/outline.safetensors", "lora_adapters/README.md", "samples/prompts.txt"]
TIMEOUT_S = 900  # generous: the CI machine may be shared
ENV_VARS_OFF = ("IMAGEGEN_LORA_PATH", "IMAGEGEN_MODEL_PATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE")


# ---------------------------------------------------------------- the wheel, built and installed out of the checkout
def _checkout_files() -> list[str]:
    """The working tree's files that git would commit (tracked + untracked, not ignored): what a clone would hold,
    with the uncommitted work in it."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                                capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("needs git to list the checkout's files")
    return [name for name in listed if name and (REPO / name).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    for name in _checkout_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    # With setuptools here, build with it (offline); without, pip fetches the build backend into an isolated env.
    no_isolation = ["--no-build-isolation"] if _has_setuptools() else []
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *no_isolation, "-w", str(base / "out"),
                           str(source)], capture_output=True, text=True, timeout=TIMEOUT_S, cwd=base)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (built,) = (base / "out").glob("imagegen-*.whl")
    return built


def _has_setuptools() -> bool:
    import importlib.util

    return importlib.util.find_spec("setuptools") is not None


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--target",
                           str(target), str(wheel)], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return target


def _dependency_paths() -> list[str]:
    """This environment's site-packages (where the dependencies are); `python -S` will not run their .pth files, so
    the editable install's finder (a .pth hook that maps `imagegen` to the checkout) stays out."""
    paths = []
    candidates = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    candidates += [p for p in sys.path if p and Path(p).name in ("site-packages", "dist-packages")]
    for path in candidates:
        if path not in paths and Path(path).resolve() != REPO:
            paths.append(path)
    return paths


@pytest.fixture
def run_installed(installed, tmp_path):
    """(argv, ...) -> CompletedProcess: `python -S ARGV` in an empty folder, seeing only the installed copy."""
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS_OFF}
    env.update(PYTHONPATH=os.pathsep.join([str(installed), *_dependency_paths()]), HF_HUB_OFFLINE="1",
               XDG_DATA_HOME=str(tmp_path / "xdg"), PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1")

    def run(*argv: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-S", *argv], cwd=empty, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT_S)
        assert proc.returncode == 0, (argv, proc.stdout[-3000:], proc.stderr[-3000:])
        return proc

    run.folder = empty
    return run


def test_the_wheel_carries_what_ships_and_stays_small(wheel):
    size = wheel.stat().st_size
    print(f"\nwheel {wheel.name}: {size} bytes ({size / 1e6:.1f} MB)")
    assert size < MAX_WHEEL_BYTES, f"the wheel is {size / 1e6:.1f} MB (limit {MAX_WHEEL_BYTES / 1e6:.0f} MB)"
    names = set(zipfile.ZipFile(wheel).namelist())
    for relative in SHIPPED:
        assert f"imagegen/shipped/{relative}" in names, relative
    assert "imagegen/weights/shapes/decoder/unet/diffusion_pytorch_model.safetensors" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "configs/", "lora_adapters/", "samples/"))]
    assert not [n for n in names if n.startswith("imagegen/shipped/samples/") and not n.endswith(".txt")]
    assert not [n for n in names if "/." in n or n.endswith((".pt", ".ckpt", ".bin", ".pth", ".pyc"))]


PROBE = textwrap.dedent("""
    import contextlib, importlib.util, io, json, sys
    from pathlib import Path
    import imagegen
    from imagegen import locations, presets
    from imagegen.cli import main
    with contextlib.redirect_stdout(io.StringIO()):
        main(["models"]); main(["lora", "list"])
    print(json.dumps({
        "file": imagegen.__file__, "sys_path": sys.path, "cwd": str(Path.cwd()),
        "meta_path": [repr(f) for f in sys.meta_path] + [n for n in sys.modules if "editable" in n.lower()],
        "imagegen_files": sorted({m.__file__ for n, m in sys.modules.items()
                                  if n.split(".")[0] == "imagegen" and getattr(m, "__file__", None)}),
        "shipped_root": str(locations.shipped_root()), "user_dir": str(locations.user_dir()),
        "shapes_prior": presets.find_preset("shapes").prior,
        "template": str(locations.existing_or_shipped("configs/templates/shapes-background.txt")),
        "recipe": str(locations.existing_or_shipped("configs/train/shapes.toml")),
        "prompts": str(locations.existing_or_shipped("samples/prompts.txt")),
        "heavy": [m for m in ("torch", "diffusers", "transformers") if m in sys.modules],
    }))
""")


def test_the_installed_copy_is_the_one_imported_and_the_checkout_is_invisible(installed, run_installed, tmp_path):
    probe = json.loads(run_installed("-c", PROBE).stdout)
    inside = installed.resolve()
    assert Path(probe["file"]).resolve().is_relative_to(inside), probe["file"]
    assert all(Path(f).resolve().is_relative_to(inside) for f in probe["imagegen_files"]), probe["imagegen_files"]
    assert Path(probe["cwd"]).resolve() == run_installed.folder.resolve() and not any(run_installed.folder.iterdir())
    for entry in probe["sys_path"]:
        path = Path(entry or probe["cwd"]).resolve()
        assert path != REPO and not path.is_relative_to(REPO / "imagegen"), entry  # not the checkout or its package
        assert (path / "imagegen").resolve() != REPO / "imagegen", entry  # the checkout's package is not reachable
    assert not [f for f in probe["meta_path"] if "editable" in f.lower()], probe["meta_path"]
    assert Path(probe["shipped_root"]) == inside / "imagegen" / "shipped"
    assert Path(probe["shapes_prior"]) == inside / "imagegen" / "weights" / "shapes" / "prior"
    assert Path(probe["template"]) == inside / "imagegen" / "shipped" / "configs" / "templates" / "shapes-background.txt"
    for name in ("recipe", "prompts"):
        assert Path(probe[name]).is_file() and Path(probe[name]).is_relative_to(inside), probe[name]
    assert probe["heavy"] == []  # `imagegen models` and `imagegen lora list` answer without torch
    if sys.platform.startswith("linux"):
        assert Path(probe["user_dir"]) == tmp_path / "xdg" / "imagegen"


def test_models_and_lora_list_from_an_empty_folder_show_the_package(installed, run_installed):
    models = {row["name"]: row for row in map(json.loads, run_installed("-m", "imagegen", "models", "--json")
                                              .stdout.splitlines())}
    assert models["shapes"]["source"] == "package" and models["shapes"]["available"] == "local"
    assert Path(models["shapes"]["path"]).is_relative_to(installed)
    table = run_installed("-m", "imagegen", "models").stdout
    assert any(line.startswith("shapes") and "package" in line and "(default)" in line for line in table.splitlines())
    adapters = {row["name"]: row for row in map(json.loads, run_installed("-m", "imagegen", "lora", "list", "--json")
                                                .stdout.splitlines())}
    assert set(adapters) == {"heart", "outline"}
    for row in adapters.values():
        assert row["source"] == "package" and row["shadows"] == [] and Path(row["path"]).is_relative_to(installed)
        assert row["base_model"].startswith("shapes")
    table = run_installed("-m", "imagegen", "lora", "list").stdout
    assert "search order" in table and str(installed / "imagegen" / "shipped" / "lora_adapters") in table


WORK = textwrap.dedent("""
    import contextlib, io, json, sys
    from PIL import Image
    from imagegen import locations
    from imagegen.cli import main
    from imagegen.evaluation import oracle

    def run(*argv):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(argv))
        return {"code": code, "out": out.getvalue(), "err": err.getvalue()[-2000:]}

    result = {}
    heart = run("a red heart on a blue background <lora:heart:1>", "--seed", "3", "--json")
    record = json.loads(heart["out"].splitlines()[0]) if heart["code"] == 0 else {}
    reading = oracle.read_image(Image.open(record["path"])) if record else None
    result["heart"] = {**heart, "shape": getattr(reading, "shape", None), "loras": record.get("loras")}
    result["classify"] = run("classify", sys.argv[1], "--labels", "red circle,blue square,green triangle", "--json")
    result["classify_templates"] = run("classify", sys.argv[1], "--labels", "orange,blue,black,white", "--templates",
                                       str(locations.existing_or_shipped("configs/templates/shapes-background.txt")),
                                       "--json")
    result["eval"] = run("eval", "--prompts", "4", "--seeds", "1", "--json")
    shipped_heart = str(locations.shipped("lora_adapters/heart.safetensors"))
    result["install"] = run("lora", "install", shipped_heart, "--name", "my-heart")
    result["install_again"] = run("lora", "install", shipped_heart, "--name", "my-heart")
    result["list"] = run("lora", "list", "--json")
    print(json.dumps(result))
""")


def test_generate_adapters_classify_eval_and_install_from_an_empty_folder(installed, run_installed, tmp_path):
    from PIL import Image

    from imagegen.evaluation import oracle

    generated = run_installed("-m", "imagegen", "a red circle", "--seed", "2", "--json")
    record = json.loads(generated.stdout.splitlines()[0])
    png = run_installed.folder / record["path"]
    reading = oracle.read_image(Image.open(png))
    assert record["model"] == "shapes" and (reading.shape, reading.colour) == ("circle", "red"), reading

    result = json.loads(run_installed("-c", WORK, str(png)).stdout.splitlines()[-1])
    for step, outcome in result.items():
        if step != "install_again":
            assert outcome["code"] == 0, (step, outcome)
    assert result["heart"]["shape"] == "heart" and result["heart"]["loras"][0]["name"] == "heart"
    top = json.loads(result["classify"]["out"])["predictions"][0]["label"]
    assert top == "red circle"
    assert json.loads(result["classify_templates"]["out"])["predictions"][0]["label"] == reading.background
    summary = json.loads(result["eval"]["out"].splitlines()[-1])
    assert summary["pairs"] == 4 and (run_installed.folder / summary["report"]).is_file()
    installed_to = Path(result["install"]["out"].strip())
    assert installed_to.name == "my-heart.safetensors" and installed_to.is_file()
    if sys.platform.startswith("linux"):
        assert installed_to.parent == tmp_path / "xdg" / "imagegen" / "lora_adapters"
    again = result["install_again"]
    assert again["code"] == 2 and "already installed" in again["err"] and str(installed_to) in again["err"]
    sources = {row["name"]: row["source"] for row in map(json.loads, result["list"]["out"].splitlines())}
    assert sources == {"heart": "package", "my-heart": "user", "outline": "package"}


# ---------------------------------------------------------------- the search order, in-process (the checkout)
def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def places(tmp_path, monkeypatch):
    """An empty working folder, an empty per-user folder, no $IMAGEGEN_*_PATH."""
    work, user = tmp_path / "work", tmp_path / "user"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(locations, "user_dir", lambda: user)
    for name in ("IMAGEGEN_LORA_PATH", "IMAGEGEN_MODEL_PATH"):
        monkeypatch.delenv(name, raising=False)
    return {"tmp": tmp_path, "work": work, "user": user}


def _copy(name: str, folder: Path, as_name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(REPO / "lora_adapters" / f"{name}.safetensors", folder / f"{as_name or name}.safetensors"))


def test_a_checkout_run_from_another_folder_finds_the_shipped_files(places):
    from imagegen.lora import files
    from imagegen.presets import find_preset

    assert files.available() == {"heart": REPO / "lora_adapters" / "heart.safetensors",
                                 "outline": REPO / "lora_adapters" / "outline.safetensors"}
    assert Path(find_preset("shapes").prior) == REPO / "imagegen" / "weights" / "shapes" / "prior"
    assert locations.existing_or_shipped("configs/templates/shapes-background.txt") == \
        REPO / "configs" / "templates" / "shapes-background.txt"
    assert locations.existing_or_shipped("nope.txt") == Path("nope.txt")


def test_search_order_env_cwd_user_package_and_shadowing(places, monkeypatch, capsys):
    env_a, env_b = places["tmp"] / "env-a", places["tmp"] / "env-b"
    monkeypatch.setenv("IMAGEGEN_LORA_PATH", os.pathsep.join([str(env_a), str(env_b)]))
    in_env = _copy("heart", env_b)
    in_cwd = _copy("heart", places["work"] / "lora_adapters")
    in_user = _copy("outline", places["user"] / "lora_adapters")
    _copy("outline", places["user"] / "lora_adapters", "mine")
    code, out, _ = run(capsys, "lora", "list", "--json")
    rows = {row["name"]: row for row in map(json.loads, out.splitlines())}
    assert code == 0 and set(rows) == {"heart", "outline", "mine"}
    assert (rows["heart"]["source"], rows["heart"]["path"]) == ("env", str(in_env))
    assert [s["source"] for s in rows["heart"]["shadows"]] == ["cwd", "package"]
    assert rows["heart"]["shadows"][0]["path"] == str(in_cwd)
    assert rows["outline"]["source"] == "user" and rows["outline"]["path"] == str(in_user)
    assert [s["source"] for s in rows["outline"]["shadows"]] == ["package"]
    assert rows["mine"]["source"] == "user" and rows["mine"]["shadows"] == []

    code, table, _ = run(capsys, "lora", "list")
    lines = table.splitlines()
    assert any(line.startswith("heart") and " env " in line for line in lines)
    assert any("shadowed by env" in line and str(in_cwd) in line for line in lines)
    order = lines[lines.index("search order (first match wins):") + 1:]
    assert [line.split()[0] for line in order] == ["env", "env", "cwd", "user", "package"]

    explicit = _copy("heart", places["tmp"] / "explicit")
    code, out, _ = run(capsys, "lora", "list", explicit.parent, "--json")
    rows = {row["name"]: row for row in map(json.loads, out.splitlines())}
    assert rows["heart"]["source"] == "explicit" and rows["heart"]["shadows"][0]["source"] == "env"

    from imagegen.lora import files
    assert files.find("heart") == in_env
    with pytest.raises(Exception, match="unknown LoRA adapter 'ghost'; available: heart, mine, outline .*user "):
        files.find("ghost")


def test_presets_follow_the_same_order(places, monkeypatch, capsys):
    from imagegen.presets import find_preset

    env = places["tmp"] / "presets"
    env.mkdir()
    (env / "shapes.toml").write_text((REPO / "configs" / "models" / "shapes.toml").read_text().replace(
        'description = "', 'description = "mine: '))
    (places["user"] / "models").mkdir(parents=True)
    (places["user"] / "models" / "tiny.toml").write_text('prior = "./tiny/prior"\ndecoder = "./tiny/decoder"\n')
    monkeypatch.setenv("IMAGEGEN_MODEL_PATH", str(env))
    preset = find_preset("shapes")
    assert preset.description.startswith("mine:") and preset.source == str(env / "shapes.toml")
    assert Path(preset.prior) == REPO / "imagegen" / "weights" / "shapes" / "prior"  # imagegen:… is the package's
    code, out, _ = run(capsys, "models", "--json")
    rows = {row["name"]: row for row in map(json.loads, out.splitlines())}
    assert rows["shapes"]["source"] == "env" and rows["shapes"]["shadows"][0]["source"] == "package"
    assert rows["tiny"]["source"] == "user" and rows["tiny"]["available"] == "missing"
    assert rows["kandinsky-2-2"]["source"] == "package"
    code, table, _ = run(capsys, "models")
    assert any("shadowed by env" in line for line in table.splitlines())
    with pytest.raises(Exception, match="unknown model 'nope'; use a preset name \\(kandinsky-2-2, shapes, tiny\\)"):
        find_preset("nope")


def test_lora_install_validates_and_never_overwrites(places, capsys, tmp_path):
    from safetensors.torch import save_file
    import torch

    source = _copy("heart", tmp_path / "downloads", "sparkle")
    code, out, err = run(capsys, "lora", "install", source)
    target = places["user"] / "lora_adapters" / "sparkle.safetensors"
    assert code == 0 and out.strip() == str(target) and target.read_bytes() == source.read_bytes()
    code, out, _ = run(capsys, "lora", "list", "--json")
    assert {r["name"]: r["source"] for r in map(json.loads, out.splitlines())}["sparkle"] == "user"

    before = target.read_bytes()
    _copy("outline", tmp_path / "other", "sparkle")
    code, _, err = run(capsys, "lora", "install", tmp_path / "other" / "sparkle.safetensors")
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(target) in err and "already installed" in err
    assert target.read_bytes() == before  # refused, not renamed or replaced

    code, _, err = run(capsys, "lora", "install", source, "--name", "heart")  # shadows the package's heart
    assert code == 0 and "shadows package" in err
    nan = tmp_path / "nan.safetensors"
    save_file({"unet.down.lora_A.weight": torch.full((2, 2), float("nan"))}, nan)
    not_lora = tmp_path / "weights.safetensors"
    save_file({"model.weight": torch.zeros(2)}, not_lora)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    pickle = tmp_path / "old.ckpt"
    pickle.write_bytes(b"not really")
    cases = [((nan,), "NaN/inf"), ((not_lora,), "holds no LoRA adapter"), ((garbage,), "not a valid safetensors"),
             ((pickle,), "pickle file"), ((source, "--name", "../up"), "plain name"),
             ((tmp_path / "missing.safetensors",), "does not exist")]
    for args, message in cases:
        code, _, err = run(capsys, "lora", "install", *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert sorted(p.name for p in (places["user"] / "lora_adapters").iterdir()) == ["heart.safetensors",
                                                                                    "sparkle.safetensors"]
