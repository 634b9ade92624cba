"""CI definitions that build a matrix's cells on the engines operators already run, stage by
stage, from the same plan (assembler.fleet.matrix). There is no scheduler of ours: each engine
runs one `assembler build --matrix FILE --cell ID` per cell, and the cells share layers
through the registry the matrix file names (`cache-registry`), with the runner's login in
docker's config.json.

- github: a generator job prints the cells of each stage as job outputs, and a job per stage
  takes them with `matrix: ${{ fromJSON(...) }}`: the cells can change without a new workflow
  (a new stage count needs one).
- github-run: the same for self-hosted runners, with `run:` steps only (no actions to fetch:
  it runs offline, e.g. under `act`).
- kubernetes: the matrix file as a ConfigMap and an Indexed Job per stage, whose pods pick
  their cell by $JOB_COMPLETION_INDEX; apply them in order, each after the one before is
  complete.
- zuul: a job per cell, depending on the jobs of the cells that build the layers it shares,
  and a playbook that builds and reports the image as a `zuul_image` artifact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml

from assembler.fleet.matrix import Matrix, Planned, by_stage

TOOL = ".venv/bin/python -m assembler"
# GitHub: the repository's variables may say how to run the tool and set it up on a runner.
GH_TOOL = "${{ vars.ASSEMBLER || '.venv/bin/python -m assembler' }}"
GH_SETUP = "${{ vars.ASSEMBLER_SETUP || 'make setup' }}"
# Self-hosted, run-only: no checkout action, so the steps run where the matrix file is.
GH_WORKDIR = "${{ vars.ASSEMBLER_WORKDIR || github.workspace }}"
IMAGE = "trove-image-assembler:latest"  # a container image with the tool (the operator's)


class _Dumper(yaml.SafeDumper):
    """Every value written out where it is used: no &anchors and *aliases (engines differ
    in whether they take them, and a reader should not have to follow them)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _dump(doc: Any) -> str:
    return str(yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=100))


def _stage_job(n: int) -> str:
    return f"stage-{n}"


def _build(matrix: Matrix, cell: str, tool: str = TOOL) -> str:
    return f"{tool} build --matrix {matrix.path.as_posix()} --cell {cell}"


def github_output(matrix: Matrix, planned: list[Planned]) -> str:
    """The generator's job outputs (`>> "$GITHUB_OUTPUT"`): each stage's cells, as JSON."""
    import json

    lines = []
    for n, stage in enumerate(by_stage(planned), 1):
        cells = {"cell": [p.cell.id for p in stage]}
        lines.append(f"{_stage_job(n)}={json.dumps(cells, separators=(',', ':'))}\n")
    return "".join(lines)


def _github(matrix: Matrix, planned: list[Planned], hosted: bool) -> str:
    stages = by_stage(planned)
    runs_on = "ubuntu-latest" if hosted else "self-hosted"
    setup: list[dict[str, Any]] = [{"uses": "actions/checkout@v4"}] if hosted else []
    setup.append({"name": "setup", "run": GH_SETUP})
    plan_run = f'{GH_TOOL} matrix {matrix.path.as_posix()} --emit github-output >> "$GITHUB_OUTPUT"'
    jobs: dict[str, Any] = {
        "plan": {
            "runs-on": runs_on,
            "outputs": {
                _stage_job(n): f"${{{{ steps.plan.outputs.{_stage_job(n)} }}}}"
                for n in range(1, len(stages) + 1)
            },
            "steps": [*setup, {"id": "plan", "name": "plan", "run": plan_run}],
        }
    }
    for n in range(1, len(stages) + 1):
        build = _build(matrix, "${{ matrix.cell }}", GH_TOOL)
        steps = [*setup, {"name": "build", "run": build}]
        if hosted:
            path = f"{matrix.output_dir}/${{{{ matrix.cell }}}}.*"
            upload = {"name": "${{ matrix.cell }}", "path": path}
            steps.append({"uses": "actions/upload-artifact@v4", "with": upload})
        jobs[_stage_job(n)] = {
            "needs": ["plan", *([_stage_job(n - 1)] if n > 1 else [])],
            "runs-on": runs_on,
            "strategy": {
                "fail-fast": False,
                "matrix": f"${{{{ fromJSON(needs.plan.outputs.{_stage_job(n)}) }}}}",
            },
            "steps": steps,
        }
    if not hosted:
        for job in jobs.values():
            job["defaults"] = {"run": {"working-directory": GH_WORKDIR}}
    workflow = {
        "name": "trove guest images",
        "on": {"workflow_dispatch": {}, "push": {"paths": [matrix.path.as_posix()]}},
        # One run of the matrix at a time: a second one would only wait on the same layers.
        "concurrency": {"group": "trove-guest-images", "cancel-in-progress": False},
        "jobs": jobs,
    }
    return _dump(workflow)


def github(matrix: Matrix, planned: list[Planned]) -> str:
    return _github(matrix, planned, hosted=True)


def github_run(matrix: Matrix, planned: list[Planned]) -> str:
    return _github(matrix, planned, hosted=False)


def kubernetes(matrix: Matrix, planned: list[Planned]) -> str:
    name = "trove-guest-images"
    docs: list[dict[str, Any]] = [{
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-matrix"},
        "data": {"matrix.toml": matrix.path.read_text()},
    }]  # fmt: skip
    for n, stage in enumerate(by_stage(planned), 1):
        container = {
            "name": "build",
            "image": IMAGE,
            "command": [
                "python3",
                "-m",
                "assembler",
                "build",
                "--matrix",
                "/etc/assembler/matrix.toml",
                "--stage",
                str(n),
            ],
            # docker's config.json, for the registry's login (a dockerconfigjson Secret).
            "env": [{"name": "DOCKER_CONFIG", "value": "/etc/assembler/docker"}],
            "workingDir": "/work",
            "volumeMounts": [
                {
                    "name": "matrix",
                    "mountPath": "/etc/assembler/matrix.toml",
                    "subPath": "matrix.toml",
                },
                {"name": "docker-config", "mountPath": "/etc/assembler/docker", "readOnly": True},
                {"name": "images", "mountPath": f"/work/{matrix.output_dir}"},
            ],
        }
        docs.append({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": f"{name}-stage-{n}", "labels": {"app": name, "stage": str(n)}},
            "spec": {
                "completionMode": "Indexed",
                "completions": len(stage),
                "parallelism": len(stage),
                "backoffLimit": 1,
                "template": {
                    "metadata": {"labels": {"app": name, "stage": str(n)}},
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [container],
                        "volumes": [
                            {"name": "matrix", "configMap": {"name": f"{name}-matrix"}},
                            {"name": "docker-config", "secret": {
                                "secretName": f"{name}-registry-login",
                                "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
                            }},
                            {"name": "images",
                             "persistentVolumeClaim": {"claimName": f"{name}-images"}},
                        ],
                    },
                },
            },
        })  # fmt: skip
    header = (
        "# Apply in order, each Job after the one before completes, e.g.\n"
        "#   kubectl apply -f - ; kubectl wait --for=condition=complete job/"
        f"{name}-stage-1 --timeout=2h ; ...\n"
    )
    return header + str(yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, width=100))


def zuul(matrix: Matrix, planned: list[Planned]) -> str:
    """zuul.d/ jobs, then (after a `---`) the playbook they run: playbooks/trove-image.yaml."""
    first: dict[str, str] = {}  # slot -> the cell that builds it
    for p in planned:
        for _, slot in p.slots:
            if slot is not None:
                first.setdefault(slot, p.cell.id)
    jobs: list[dict[str, Any]] = [{
        "job": {
            "name": "trove-image-build",
            "abstract": True,
            "description": "Build one cell of the Trove guest image matrix.",
            "run": "playbooks/trove-image.yaml",
            "timeout": 7200,
            "vars": {"matrix_file": matrix.path.as_posix()},
        }
    }]  # fmt: skip
    names = []
    for p in planned:
        needs = sorted({first[s] for _, s in p.slots if s is not None and first[s] != p.cell.id})
        job: dict[str, Any] = {
            "name": f"trove-image-{p.cell.id}",
            "parent": "trove-image-build",
            "vars": {"cell": p.cell.id, "image_name": p.cell.id, "image_format": p.cell.format,
                     "image_path": p.cell.output},
        }  # fmt: skip
        if needs:
            job["dependencies"] = [f"trove-image-{c}" for c in needs]
        jobs.append({"job": job})
        names.append(job["name"])
    jobs.append({"project": {"periodic": {"jobs": names}}})
    playbook = [{
        "hosts": "all",
        "tasks": [
            {"name": "Build the cell", "shell": {
                "cmd": f"{TOOL} build --matrix {{{{ matrix_file }}}} --cell {{{{ cell }}}}",
                "chdir": "{{ zuul.project.src_dir }}",
            }},
            {"name": "Checksums", "stat": {
                "path": "{{ zuul.project.src_dir }}/{{ image_path }}",
                "checksum_algorithm": "{{ item }}",
            }, "loop": ["sha256", "md5"], "register": "sums"},
            {"name": "Report the image", "zuul_return": {"data": {"zuul": {"artifacts": [{
                "name": "{{ image_name }}",
                "url": "{{ image_path }}",
                "metadata": {
                    "type": "zuul_image",
                    "image_name": "{{ image_name }}",
                    "format": "{{ image_format }}",
                    "sha256": "{{ sums.results[0].stat.checksum }}",
                    "md5sum": "{{ sums.results[1].stat.checksum }}",
                },
            }]}}}},
        ],
    }]  # fmt: skip
    return _dump(jobs) + "---\n" + _dump(playbook)


EMITTERS: dict[str, Callable[[Matrix, list[Planned]], str]] = {
    "github": github,
    "github-run": github_run,
    "github-output": github_output,
    "kubernetes": kubernetes,
    "zuul": zuul,
}
