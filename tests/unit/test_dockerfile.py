"""The Dockerfile and .dockerignore, checked without a Docker engine: what would break the build or the image.

The parser understands what this Dockerfile uses: comments, line continuations, ``FROM image [AS name]``,
flags (``--from=``), JSON (exec) and shell forms. .dockerignore follows Docker's rules: patterns are matched
against a path and each of its parents, the last matching pattern decides, ``!`` re-includes.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

from oscar_manager import cli
from oscar_manager.api.routes import health
from oscar_manager.backends import manifests
from oscar_manager.settings import Settings

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = "scripts/build-supervisor"
BASE_IMAGE = "python:3.11-slim-bookworm"


@dataclass
class Instruction:
    keyword: str
    flags: dict[str, str]
    arguments: str

    def words(self) -> list[str]:
        """Exec form as its JSON list, shell form split as a shell would."""
        if self.arguments.startswith("["):
            words: list[str] = json.loads(self.arguments)
            return words
        return shlex.split(self.arguments)


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [item for item in self.instructions if item.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.image} has no {keyword}"
        return found[-1]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for item in self.all("ENV"):
            for word in shlex.split(item.arguments):
                name, sep, value = word.partition("=")
                assert sep, f"ENV {item.arguments!r}: use the NAME=value form"
                values[name] = value
        return values


def parse_dockerfile(text: str) -> list[Stage]:
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        if not pending and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending.strip(), "the Dockerfile ends inside a continued line"
    stages: list[Stage] = []
    for line in filter(str.strip, logical):
        keyword, _, rest = line.strip().partition(" ")
        flags: dict[str, str] = {}
        rest = rest.strip()
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            name, _, value = flag[2:].partition("=")
            flags[name] = value
            rest = rest.strip()
        instruction = Instruction(keyword.upper(), flags, rest)
        if instruction.keyword == "FROM":
            words = rest.split()
            assert len(words) == 1 or (len(words) == 3 and words[1].lower() == "as"), f"FROM {rest!r}"
            stages.append(Stage(words[0], words[2] if len(words) == 3 else None))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append(instruction)
    return stages


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, index = "", 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out, index = out + "(?:.*/)?", index + 3
        elif pattern.startswith("**", index):
            out, index = out + ".*", index + 2
        elif pattern[index] == "*":
            out, index = out + "[^/]*", index + 1
        elif pattern[index] == "?":
            out, index = out + "[^/]", index + 1
        else:
            assert pattern[index] not in "[\\", (
                f"pattern {pattern!r}: classes and escapes are not handled here"
            )
            out, index = out + re.escape(pattern[index]), index + 1
    return re.compile(out + r"\Z")


@dataclass
class DockerIgnore:
    rules: list[tuple[bool, re.Pattern[str]]]  # (re-include?, pattern)

    @classmethod
    def parse(cls, text: str) -> DockerIgnore:
        rules = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            include = line.startswith("!")
            pattern = line[1:].strip() if include else line
            rules.append((include, _pattern_regex(pattern.strip("/"))))
        return cls(rules)

    def sent(self, path: str) -> bool:
        """Whether ``path`` (relative to the context) is in the build context."""
        parts = path.strip("/").split("/")
        candidates = ["/".join(parts[: end + 1]) for end in range(len(parts))]
        excluded = False
        for include, regex in self.rules:
            if any(regex.match(candidate) for candidate in candidates):
                excluded = not include
        return not excluded


@cache
def stages() -> list[Stage]:
    return parse_dockerfile((REPO / "Dockerfile").read_text())


@cache
def dockerignore() -> DockerIgnore:
    return DockerIgnore.parse((REPO / ".dockerignore").read_text())


@cache
def tracked_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
    return [name for name in listed.stdout.decode().split("\0") if name]


def builder() -> Stage:
    named = [stage for stage in stages() if stage.name == "builder"]
    assert len(named) == 1
    return named[0]


def runtime() -> Stage:
    return stages()[-1]


def context_copies() -> list[tuple[Stage, str]]:
    """(stage, source) of every COPY from the build context."""
    return [
        (stage, source)
        for stage in stages()
        for item in stage.all("COPY")
        if "from" not in item.flags
        for source in item.words()[:-1]
    ]


def test_a_builder_and_a_runtime_stage_on_the_same_slim_python() -> None:
    assert [(stage.image, stage.name) for stage in stages()] == [(BASE_IMAGE, "builder"), (BASE_IMAGE, None)]
    # The image is the last stage: it must not be the one with compilers' leftovers and build tools.
    assert runtime() is not builder()
    assert runtime_packages() == {"bubblewrap"}  # the sandbox; none of the builder's tools


def runtime_packages() -> set[str]:
    installs = [item.arguments for item in runtime().all("RUN") if "apt-get install" in item.arguments]
    words = " ".join(command.partition("apt-get install")[2].partition("&&")[0] for command in installs)
    return {word for word in words.split() if not word.startswith("-")}


def test_every_copied_source_exists_and_is_in_the_build_context() -> None:
    copies = context_copies()
    assert copies
    tracked = tracked_files()
    for _stage, source in copies:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert dockerignore().sent(source), f"COPY {source}: excluded by .dockerignore"
        below = [name for name in tracked if name == source or name.startswith(source.rstrip("/") + "/")]
        assert below, f"COPY {source}: nothing tracked by git there"
        left_out = [name for name in below if not dockerignore().sent(name)]
        assert not left_out, f"COPY {source}: .dockerignore leaves out {left_out[:5]}"


def test_the_package_build_has_what_pyproject_names() -> None:
    """hatchling needs the readme and the force-included folders: they must be copied before the install."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {"pyproject.toml", project["project"]["readme"], "oscar_manager"}
    needed |= set(project["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"])
    copied = {source.rstrip("/") for stage, source in context_copies() if stage is builder()}
    assert needed <= copied


def test_local_state_stays_out_of_the_build_context() -> None:
    for path in (
        ".git/config",
        ".venv/bin/python",
        ".cache/bin/supervisor",
        "oscar-data/oscar.db",
        "build/x",
    ):
        assert not dockerignore().sent(path), path
    assert not dockerignore().sent("oscar_manager/__pycache__/cli.cpython-311.pyc")


def test_copies_between_stages_name_an_earlier_stage() -> None:
    seen: set[str] = set()
    for stage in stages():
        for item in stage.all("COPY"):
            if "from" in item.flags:
                assert item.flags["from"] in seen, f"COPY --from={item.flags['from']}: no earlier stage"
        if stage.name:
            seen.add(stage.name)


def test_the_builder_builds_the_supervisor_with_the_tests_script_and_the_image_ships_it() -> None:
    runs = [item.words() for item in builder().all("RUN") if BUILD_SCRIPT in item.arguments]
    assert len(runs) == 1
    program, output = runs[0]  # the script and its one argument: where the executable goes
    assert program == BUILD_SCRIPT
    # The script run is the repository's: copied into the builder's working directory under its own name.
    workdir = builder().last("WORKDIR").arguments
    copied = [item.words() for item in builder().all("COPY") if item.words()[:-1] == [BUILD_SCRIPT]]
    assert copied
    assert str(Path(workdir, copied[0][-1])) == str(Path(workdir, BUILD_SCRIPT))
    # Run directly, so it must be executable as git checks it out (the context keeps the mode).
    mode = subprocess.run(
        ["git", "ls-files", "-s", BUILD_SCRIPT], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()[0]
    assert mode == "100755"
    shipped = [
        item.words()
        for item in runtime().all("COPY")
        if item.flags.get("from") == "builder" and item.words()[0] == output
    ]
    assert shipped == [[output, manifests.IMAGE_SUPERVISOR]]


def test_the_builder_installs_the_tools_the_build_script_needs() -> None:
    script = (REPO / BUILD_SCRIPT).read_text()
    declared = re.search(r"^REQUIRED_TOOLS=\"([^\"]*)\"", script, re.MULTILINE)
    assert declared, "scripts/build-supervisor declares REQUIRED_TOOLS"
    packages = {pair.split(":")[1] for pair in declared.group(1).split()}
    # Essential packages are in every Debian image, slim ones included.
    needed = packages - {"coreutils", "libc-bin", "util-linux", "findutils"}
    installs = " ".join(
        item.arguments for item in builder().all("RUN") if "apt-get install" in item.arguments
    )
    assert needed
    assert needed <= set(installs.split())


def test_the_runtime_runs_as_a_numeric_non_root_user_owning_the_data_directory() -> None:
    user = runtime().last("USER").arguments
    match = re.fullmatch(r"(\d+):(\d+)", user)
    assert match, f"USER {user!r}: give uid:gid as numbers (Kubernetes runAsNonRoot checks numbers)"
    uid, gid = match.groups()
    assert uid != "0"
    assert gid != "0"
    data_dir = runtime().env()["OSCAR_DATA_DIR"]
    assert data_dir.startswith("/")
    owner = rf"(chown\s+{uid}:{gid}\s+|install\s+-d\s+-o\s+{uid}\s+-g\s+{gid}\s+(-m\s+\d+\s+)?)"
    owned = owner + re.escape(data_dir) + r"\b"
    assert any(re.search(owned, item.arguments) for item in runtime().all("RUN")), owned


def test_the_environment_names_real_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {name: value for name, value in runtime().env().items() if name.startswith("OSCAR_")}
    assert set(env) >= {"OSCAR_HOST", "OSCAR_DATA_DIR"}
    for name in env:
        assert name.lower() in Settings.model_fields, f"ENV {name} is not a setting"
    for name in [name for name in Settings.model_fields if name.upper() not in env]:
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.oscar_host == "0.0.0.0"  # noqa: S104 (reachable from outside the container)
    assert str(settings.oscar_data_dir) == env["OSCAR_DATA_DIR"]


def test_the_exposed_port_is_the_one_the_manager_listens_on() -> None:
    port = runtime().env().get("OSCAR_SERVICE_PORT") or str(
        Settings.model_fields["oscar_service_port"].default
    )
    assert runtime().last("EXPOSE").words() == [port]
    probe = runtime().last("HEALTHCHECK").arguments
    assert f"'{port}'" in probe
    assert "/health'" in probe
    assert "/health" in {getattr(route, "path", None) for route in health.router.routes}


def test_the_entrypoint_is_the_console_script_and_the_command_a_subcommand() -> None:
    entrypoint = runtime().last("ENTRYPOINT").words()
    command = runtime().last("CMD").words()
    assert runtime().last("ENTRYPOINT").arguments.startswith("[")  # exec form: signals reach the manager
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert entrypoint == ["oscar-manager"]
    assert project["project"]["scripts"]["oscar-manager"] == "oscar_manager.cli:main"
    assert command == ["serve"]
    with pytest.raises(SystemExit) as exited:
        cli.main([*command, "--help"])  # argparse: 0 for a known subcommand, 2 for an unknown one
    assert exited.value.code == 0


def test_the_parser_reads_what_it_should() -> None:
    """The helpers themselves, on a Dockerfile that breaks the rules above."""
    parsed = parse_dockerfile("FROM a AS b\n# c\nRUN x \\\n  # inner\n  y\nFROM c\nUSER root\n")
    assert [(stage.image, stage.name) for stage in parsed] == [("a", "b"), ("c", None)]
    assert parsed[0].last("RUN").arguments.split() == ["x", "y"]
    ignore = DockerIgnore.parse("**\n!src\n**/*.pyc\n")
    assert ignore.sent("src/a/b.py")
    assert not ignore.sent("src/a/b.pyc")
    assert not ignore.sent("tests/x.py")
