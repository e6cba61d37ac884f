"""What docker/Dockerfile puts into the image, and what .dockerignore keeps out of its context."""

from __future__ import annotations

import json
import posixpath
import re
import shlex

from tests.k8s.manifests import REPO

DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        instr, _, args = full.partition(" ")
        out.append((instr.upper(), args.strip()))
    return out


def final_stage(instructions: list[tuple[str, str]]) -> tuple[str, list[tuple[str, str]]]:
    """The base image (global ARG defaults substituted, as a build without --build-arg does)
    and the instructions of the last build stage."""
    froms = [i for i, (instr, _) in enumerate(instructions) if instr == "FROM"]
    assert froms, "the Dockerfile has no FROM"
    defaults = dict(args.split("=", 1) for instr, args in instructions[: froms[0]] if instr == "ARG" and "=" in args)
    base = [a for a in instructions[froms[-1]][1].split() if not a.startswith("--")][0]
    base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults[m.group(1) or m.group(2)], base)
    return base, instructions[froms[-1] + 1 :]


def image_file_map(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """Path in the image -> path in the repo, for what the final stage COPY/ADDs from the context."""
    _, stage = final_stage(instructions)
    workdir, mapping = "/", {}
    for instr, args in stage:
        if instr == "WORKDIR":
            workdir = posixpath.normpath(posixpath.join(workdir, args))
        elif instr in ("COPY", "ADD"):
            tokens = shlex.split(args)
            if tokens and tokens[0].startswith("["):
                tokens = json.loads(args)
            flags = [t for t in tokens if t.startswith("--")]
            if any(f.startswith("--from") for f in flags):
                continue
            *srcs, dest = [t for t in tokens if not t.startswith("--")]
            dest_abs = posixpath.normpath(posixpath.join(workdir, dest))
            into_dir = dest.endswith("/") or len(srcs) > 1
            for src in srcs:
                src = posixpath.normpath(src)
                if (REPO / src).is_dir():
                    mapping[dest_abs] = src
                elif into_dir:
                    mapping[posixpath.join(dest_abs, posixpath.basename(src))] = src
                else:
                    mapping[dest_abs] = src
    return mapping


def repo_path_in_image(image_path: str, mapping: dict[str, str]) -> str | None:
    """The repo path that ends up at `image_path` in the image, or None."""
    image_path = posixpath.normpath(image_path)
    for dest in sorted(mapping, key=len, reverse=True):
        if image_path == dest:
            return mapping[dest]
        if image_path.startswith(dest.rstrip("/") + "/"):
            return posixpath.join(mapping[dest], image_path[len(dest.rstrip("/")) + 1 :])
    return None


def _ignore_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignored(relpath: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = relpath.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        raw = raw.strip()
        if not raw or raw.startswith("#"):
            continue
        negate = raw.startswith("!")
        pattern = posixpath.normpath(raw.lstrip("!").strip().strip("/"))
        rx = _ignore_regex(pattern)
        if any(rx.match(p) for p in prefixes):
            excluded = not negate
    return excluded
