"""Static checks of the container stack: compose.yaml, docker/Dockerfile, the Redis init script.

None of these needs a Docker engine or the running stack. ``docker-compose config`` (Debian's
docker-compose 1.29.2, which ``make test`` installs) validates and normalises compose.yaml; the
Dockerfile, .dockerignore, docker/redis.conf and the init script are read as text.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
INIT_SCRIPT = ROOT / "docker" / "redis-cluster-init.sh"
REDIS_CONF = ROOT / "docker" / "redis.conf"

REDIS_NODES = [f"redis-{i}" for i in range(6)]
EXPECTED_SERVICES = {
    *REDIS_NODES,
    "redis-cluster-init",
    "postgres",
    "migrate",
    "gateway",
    "prometheus",
    "grafana",
    "otel-collector",
    "jaeger",
}
OBSERVABILITY = {"prometheus", "grafana", "otel-collector", "jaeger"}
GATEWAY_DEPENDS_ON = {
    "postgres": "service_healthy",
    "redis-cluster-init": "service_completed_successfully",
    "migrate": "service_completed_successfully",
}
# Files the image build and the stack need in the repository (some are written by others).
REQUIRED_FILES = [
    "requirements.lock",
    "pyproject.toml",
    "README.md",
    "alembic.ini",
    "alembic",
    "app",
]
TIMEOUT_S = 60


# --- helpers -------------------------------------------------------------------------------


def _docker_compose() -> str:
    exe = shutil.which("docker-compose")
    if exe:
        return exe
    if os.geteuid() == 0:
        pytest.fail(
            "docker-compose is not installed; run `make test`, which installs Debian's "
            "docker-compose (1.29.2) before running the tests",
            pytrace=False,
        )
    pytest.skip(
        "docker-compose is not installed and, not being root, this run cannot install it "
        "(Debian package docker-compose); `make test` installs it"
    )


def _run_compose(*args: str) -> subprocess.CompletedProcess[str]:
    # Neither the caller's COMPOSE_*/DOCKER_* settings nor the stack's own knobs may change
    # what is validated.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COMPOSE_", "DOCKER_", "REDIS_CLUSTER_"))
    }
    return subprocess.run(
        [_docker_compose(), "-f", str(COMPOSE_FILE), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def _instructions(text: str) -> list[tuple[str, str]]:
    """Dockerfile instructions as (KEYWORD, arguments), continuations joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        keyword, _, rest = (buf + line).strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
        buf = ""
    if buf.strip():
        keyword, _, rest = buf.strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def _stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions:
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, rest))
    return stages


def _copy_sources(instructions: list[tuple[str, str]]) -> list[str]:
    """Build-context sources of every COPY/ADD that does not copy from another stage."""
    sources: list[str] = []
    for keyword, rest in instructions:
        if keyword not in {"COPY", "ADD"}:
            continue
        args = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
        flags = [a for a in args if a.startswith("--")]
        if any(f.startswith("--from=") for f in flags):
            continue
        paths = [a for a in args if not a.startswith("--")]
        assert len(paths) >= 2, f"{keyword} {rest}: expected sources and a destination"
        sources.extend(paths[:-1])
    return sources


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus ``**``) as a regular expression."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith(("!", "^")) else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _dockerignore_excludes() -> Callable[[str], bool]:
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
        rules.append((negate, _glob_regex(line)))

    def excluded(rel: str) -> bool:
        # As Docker does: a rule applies to a path when it matches it or one of its parents;
        # the last rule that applies wins.
        parts = Path(rel).parts
        candidates = ["/".join(parts[: k + 1]) for k in range(len(parts))]
        result = False
        for negate, rx in rules:
            if any(rx.match(c) for c in candidates):
                result = not negate
        return result

    return excluded


def _is_bytecode_or_cache(rel: Path) -> bool:
    return rel.suffix in {".pyc", ".pyo"} or any(
        p in {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"} for p in rel.parts
    )


def _conditions(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


# --- compose.yaml --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """compose.yaml as docker-compose normalises it (anchors, merge keys, defaults resolved)."""
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the normalised config")
    proc = _run_compose("config")
    assert proc.returncode == 0, f"docker-compose config failed:\n{proc.stderr}"
    config = yaml.safe_load(proc.stdout)
    assert isinstance(config, dict)
    return config


def test_compose_config_is_valid() -> None:
    proc = _run_compose("config", "-q")
    assert proc.returncode == 0, f"docker-compose config -q refused compose.yaml:\n{proc.stderr}"
    assert proc.stdout == ""


def test_compose_has_the_expected_services(compose: dict[str, Any]) -> None:
    missing = EXPECTED_SERVICES - set(compose["services"])
    assert not missing, f"services missing from compose.yaml: {sorted(missing)}"


def test_gateway_waits_for_its_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert _conditions(services["gateway"]) == GATEWAY_DEPENDS_ON
    assert _conditions(services["migrate"]) == {"postgres": "service_healthy"}
    assert _conditions(services["redis-cluster-init"]) == dict.fromkeys(
        REDIS_NODES, "service_healthy"
    )


def test_every_waited_on_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dep, condition in _conditions(service).items():
            if condition == "service_healthy":
                assert services[dep].get("healthcheck", {}).get("test"), (
                    f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck"
                )


def test_redis_nodes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    data_volumes = set()
    for name in REDIS_NODES:
        node = services[name]
        assert node["image"].startswith("redis:7.0."), node["image"]
        assert "ping" in " ".join(node["healthcheck"]["test"])
        mounts = [
            str(v) if isinstance(v, str) else f"{v['source']}:{v['target']}"
            for v in node["volumes"]
        ]
        data = [m.split(":")[0] for m in mounts if m.split(":")[1] == "/data"]
        assert len(data) == 1, f"{name}: expected one volume at /data, got {mounts}"
        assert data[0] in compose.get("volumes", {}), f"{name}: /data is not a named volume"
        data_volumes.add(data[0])
    assert len(data_volumes) == len(REDIS_NODES), "each Redis node needs its own data volume"


def test_gateway_configuration(compose: dict[str, Any]) -> None:
    services = compose["services"]
    gateway = services["gateway"]
    env = gateway["environment"]
    assert env["CACHEGW_REDIS__NODES"].split(",") == [f"{n}:6379" for n in REDIS_NODES]
    assert "@postgres:5432/" in env["CACHEGW_PG__DSN"]
    assert services["migrate"]["environment"]["CACHEGW_PG__DSN"] == env["CACHEGW_PG__DSN"]
    assert any(int(p["target"]) == 8000 for p in gateway["ports"])
    assert "readyz" in " ".join(gateway["healthcheck"]["test"])
    for name in ("gateway", "migrate"):
        build = services[name]["build"]
        assert Path(build["context"]).resolve() == ROOT, f"{name}: build context is not the repo"
        assert (Path(build["context"]) / build["dockerfile"]).resolve() == DOCKERFILE.resolve()
    assert services["migrate"]["command"] == ["alembic", "upgrade", "head"]


def test_a_newcomer_gets_an_api_key_from_a_one_shot_service(compose: dict[str, Any]) -> None:
    """``docker compose run --rm api-key`` (as the README and compose.yaml say): the gateway's
    image, the gateway's store, after the migration; a profile of its own, so ``up`` skips it."""
    services = compose["services"]
    key = services["api-key"]
    assert key["image"] == services["gateway"]["image"]
    assert key["profiles"] == ["setup"]
    assert key["command"][:3] == ["cachegw", "keys", "create"]
    assert (
        key["environment"]["CACHEGW_PG__DSN"]
        == services["gateway"]["environment"]["CACHEGW_PG__DSN"]
    )
    assert _conditions(key) == {"migrate": "service_completed_successfully"}
    assert "docker compose run --rm api-key" in (ROOT / "README.md").read_text()


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "build" in service:
            continue
        image = service["image"]
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag, f"{name}: image {image} has no tag"
        assert tag != "latest", f"{name}: image {image} is not pinned"


def test_files_named_by_compose_exist(compose: dict[str, Any]) -> None:
    missing = []
    for name, service in compose["services"].items():
        if "build" in service:
            build = service["build"]
            dockerfile = Path(build["context"]) / build.get("dockerfile", "Dockerfile")
            if not dockerfile.is_file():
                missing.append(f"{name}: {dockerfile}")
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith(("/", ".")) and not Path(source).exists():
                missing.append(f"{name}: {source}")
    assert not missing, f"files named by compose.yaml are missing: {missing}"


def test_prometheus_scrapes_the_gateway(compose: dict[str, Any]) -> None:
    if "prometheus" not in compose["services"]:
        pytest.skip("compose.yaml has no prometheus service")
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    targets = [
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]
    assert "gateway:8000" in targets


def test_the_observability_profile(compose: dict[str, Any]) -> None:
    yaml = pytest.importorskip("yaml")
    services = compose["services"]
    profiled = {name for name, s in services.items() if "observability" in s.get("profiles", [])}
    assert profiled == OBSERVABILITY
    collector = yaml.safe_load((ROOT / "docker" / "otel-collector.yaml").read_text())
    pipeline = collector["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]
    (exporter,) = pipeline["exporters"]
    assert collector["exporters"][exporter]["endpoint"] == "jaeger:4317"
    assert "COLLECTOR_OTLP_ENABLED" in services["jaeger"]["environment"]
    env = services["gateway"]["environment"]
    # Off unless asked for: an empty endpoint leaves tracing off (app/tracing.py).
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == ""
    assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"


# --- docker/Dockerfile and .dockerignore ---------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return _instructions(DOCKERFILE.read_text())


def test_dockerfile_is_multi_stage(dockerfile: list[tuple[str, str]]) -> None:
    assert sum(1 for keyword, _ in dockerfile if keyword == "FROM") >= 2


def test_dockerfile_runtime_stage(dockerfile: list[tuple[str, str]]) -> None:
    final = _stages(dockerfile)[-1]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users, "the runtime stage sets no USER (it would run as root)"
    user = users[-1].split(":")[0].strip()
    assert user not in {"root", "0"}, f"the runtime stage runs as {users[-1]}"
    checks = [rest for keyword, rest in final if keyword == "HEALTHCHECK"]
    assert checks, "the runtime stage has no HEALTHCHECK"
    assert checks[-1].upper() != "NONE"
    assert any(k == "EXPOSE" and "8000" in rest.split() for k, rest in final)
    cmds = [rest for keyword, rest in final if keyword == "CMD"]
    assert cmds, "the runtime stage has no CMD"
    cmd = json.loads(cmds[-1])  # exec form, so that the server gets the signals (the drain)
    assert cmd[:2] == ["cachegw", "serve"]  # which honours PORT and WORKERS
    envs = " ".join(rest for keyword, rest in final if keyword == "ENV")
    assert re.search(r"\bPORT=8000\b", envs)
    assert re.search(r"\bWORKERS=1\b", envs)


def test_dockerfile_installs_the_lock(dockerfile: list[tuple[str, str]]) -> None:
    runs = " ".join(rest for keyword, rest in _stages(dockerfile)[0] if keyword == "RUN")
    assert re.search(r"pip install --no-cache-dir --require-hashes -r requirements\.lock", runs)
    assert re.search(r"pip install --no-cache-dir --no-deps \.", runs)


def test_every_locked_package_carries_its_hashes() -> None:
    """Both locks are made with hashes (make lock) and pip verifies them on every install."""
    for lock in ("requirements.lock", "requirements-dev.lock"):
        text = (ROOT / lock).read_text()
        pins = re.findall(
            r"^([A-Za-z0-9_.\-]+)==\S+ \\\n((?:\s+--hash=sha256:[0-9a-f]{64}.*\n)+)",
            text,
            flags=re.MULTILINE,
        )
        names = re.findall(r"^([A-Za-z0-9_.\-]+)==", text, flags=re.MULTILINE)
        assert names, lock
        assert [name for name, _ in pins] == names, lock


def test_dockerfile_copy_sources_exist(dockerfile: list[tuple[str, str]]) -> None:
    sources = _copy_sources(dockerfile)
    assert sources, "no COPY from the build context"
    missing = sorted(
        {s for s in sources if not any(ROOT.glob(s.rstrip("/").removeprefix("./")))}
        | {f for f in REQUIRED_FILES if not (ROOT / f).exists()}
    )
    assert not missing, f"missing from the repository (needed by the image): {missing}"


def test_dockerignore_lets_copy_sources_through(dockerfile: list[tuple[str, str]]) -> None:
    excluded = _dockerignore_excludes()
    blocked = []
    for source in _copy_sources(dockerfile):
        rel = source.rstrip("/").removeprefix("./")
        if excluded(rel):
            blocked.append(rel)
            continue
        path = ROOT / rel
        if path.is_dir():
            for file in path.rglob("*"):
                relfile = file.relative_to(ROOT)
                if file.is_file() and not _is_bytecode_or_cache(relfile) and excluded(str(relfile)):
                    blocked.append(str(relfile))
    assert not blocked, f".dockerignore keeps these COPY sources out of the context: {blocked}"
    for private in (".venv", ".git", ".env"):
        assert excluded(private), f".dockerignore must keep {private} out of the context"


# --- Redis ---------------------------------------------------------------------------------


def test_redis_conf_cluster_settings() -> None:
    settings: dict[str, str] = {}
    for raw in REDIS_CONF.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            settings[key.lower()] = value.strip()
    assert settings.get("cluster-enabled") == "yes"
    assert settings.get("cluster-config-file") == "nodes.conf"
    assert settings.get("cluster-require-full-coverage") == "no"
    assert settings.get("cluster-allow-reads-when-down") == "yes"
    assert settings.get("appendonly") == "yes"
    assert settings.get("cluster-node-timeout", "").isdigit()


def test_init_script_syntax() -> None:
    proc = subprocess.run(
        ["sh", "-n", str(INIT_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_init_script_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        if os.geteuid() == 0:
            pytest.fail("shellcheck is missing: run `make test`, which installs it")
        pytest.skip("shellcheck is not installed (as root, `make test` installs it)")
    proc = subprocess.run(
        [shellcheck, "--shell=sh", str(INIT_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
